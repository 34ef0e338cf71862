// CUDA kernel of row_logsumexp: one block per row, an online log-sum-exp per thread merged
// across the block.
#include <cstdint>
#include <limits>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/Dispatch.h>

#include "common/acc_type.h"
#include "common/block_reduce.cuh"
#include "common/cuda_api.cuh"
#include "common/vec_load.cuh"
#include "common/row_layout.h"
#include "math/online_lse.h"
#include "row_lse/row_lse.h"

namespace objx::cuda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) row_logsumexp_kernel(
    const scalar_t* __restrict__ x, RowLayout layout, int64_t vocab, acc_t temperature, acc_t* __restrict__ out) {
  const scalar_t* row = x + layout.offset(blockIdx.x);
  math::LseState<acc_t> st = math::lse_empty<acc_t>();
  // divided as the distill kernels divide
  for_row(row, vocab, [&](int64_t, scalar_t x) { math::lse_add(st, static_cast<acc_t>(x) / temperature); });
  st = block_lse(st);
  if (threadIdx.x == 0) out[blockIdx.x] = math::lse_finish(st);
}

at::Tensor logsumexp(const at::Tensor& x, double temperature) {
  const DeviceGuard guard(x.device());
  const int64_t rows = row_count(x), vocab = vocab_size(x);
  auto out = at::empty({rows}, x.options().dtype(acc_dtype(x.scalar_type())));
  if (rows == 0) return out;
  check_grid_rows("objx.row_logsumexp", rows);
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "objx_row_logsumexp", [&] {
    using acc_t = acc_type<scalar_t>;
    OBJX_LAUNCH(rows, kThreads, 0, stream, row_logsumexp_kernel<scalar_t, acc_t>)(
        x.const_data_ptr<scalar_t>(), row_layout(x), vocab, static_cast<acc_t>(temperature),
        out.mutable_data_ptr<acc_t>());
    OBJX_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace objx::cuda

namespace objx {
extern const RowLseKernels kCudaRowLseKernels{&cuda::logsumexp};
}  // namespace objx
