// CUDA kernel of row_logsumexp: one block per row, an online log-sum-exp per thread merged
// across the block.
#include <cstdint>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "block_reduce.cuh"
#include "launch.cuh"
#include "objx/acc_type.h"
#include "objx/math/online_lse.h"
#include "objx/prob_loss.h"
#include "objx/row_lse.h"

namespace objx::cuda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) row_logsumexp_kernel(
    const scalar_t* __restrict__ x, int64_t stride, int64_t vocab, acc_t temperature, acc_t* __restrict__ out) {
  const scalar_t* row = x + blockIdx.x * stride;
  math::LseState<acc_t> st = math::lse_empty<acc_t>();
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x)
    math::lse_add(st, static_cast<acc_t>(row[j]) / temperature);  // divided as the distill kernels divide
  acc_t unused = 0;
  st = block_lse(st, unused);
  if (threadIdx.x == 0) out[blockIdx.x] = math::lse_finish(st);
}

}  // namespace

at::Tensor row_logsumexp_rows(const at::Tensor& x, double temperature) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), vocab = x.size(1);
  auto out = at::empty({rows}, x.options().dtype(prob_acc_dtype(x.scalar_type())));
  if (rows == 0) return out;
  check_grid_rows("objx.row_logsumexp", rows);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "objx_row_logsumexp", [&] {
    using acc_t = acc_type<scalar_t>;
    row_logsumexp_kernel<scalar_t, acc_t><<<rows, kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), x.stride(0), vocab, static_cast<acc_t>(temperature),
        out.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace objx::cuda
