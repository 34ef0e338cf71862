// Ops that let the test suite check the CUDA simulator itself (library objx_sim). Only the
// simulation build compiles this file, with the host compiler: the kernels run on CPU tensors.
#if defined(OBJX_CUDA_SIM) && !defined(__CUDACC__)
#include <cstdint>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "sim/cuda_sim.h"
#include "sim/selftest_kernels.cuh"

namespace objx::sim::selftest {
namespace {

void check_rows(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2, op,
              ": expected a float32 CPU tensor [R, C], got ", x.scalar_type(), " ", x.sizes(), " on ", x.device());
}

// barrier=false leaves out the __syncthreads() the kernel needs: the result is wrong.
at::Tensor block_sum(const at::Tensor& x, bool barrier) {
  check_rows(x, "objx_sim::block_sum");
  const auto xc = x.contiguous();
  auto out = at::zeros({x.size(0)}, x.options());
  if (x.size(0) > 0)
    OBJX_LAUNCH(x.size(0), kThreads, 0, nullptr, block_sum_kernel)(xc.const_data_ptr<float>(), x.size(1), barrier,
                                                                    out.mutable_data_ptr<float>());
  return out;
}

at::Tensor warp_sum(const at::Tensor& x) {
  check_rows(x, "objx_sim::warp_sum");
  const auto xc = x.contiguous();
  auto out = at::zeros({x.size(0)}, x.options());
  if (x.size(0) > 0)
    OBJX_LAUNCH(x.size(0), kThreads, 0, nullptr, warp_sum_kernel)(xc.const_data_ptr<float>(), x.size(1),
                                                                   out.mutable_data_ptr<float>());
  return out;
}

// Reads x's element numel - 1 + past: past = 1 is one element past the end of its storage, which
// AddressSanitizer reports as a heap-buffer-overflow.
at::Tensor out_of_bounds(const at::Tensor& x, int64_t past) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() && x.numel() > 0,
              "objx_sim::out_of_bounds: expected a non-empty contiguous float32 CPU tensor");
  auto out = at::zeros({1}, x.options());
  OBJX_LAUNCH(1, kThreads, 0, nullptr, read_element_kernel)(x.const_data_ptr<float>(), x.numel() - 1 + past,
                                                            out.mutable_data_ptr<float>());
  return out;
}

// The minimum of int64 values >= 0, found by atomicMin of every thread of ceil(n / 256) blocks.
at::Tensor atomic_min(const at::Tensor& values) {
  TORCH_CHECK(values.device().is_cpu() && values.scalar_type() == at::kLong && values.dim() == 1 && values.numel() > 0,
              "objx_sim::atomic_min: expected a non-empty 1-D int64 CPU tensor");
  TORCH_CHECK(values.min().item<int64_t>() >= 0, "objx_sim::atomic_min: values must be >= 0");
  const auto v = values.contiguous();
  const int64_t n = v.numel();
  auto slot = at::full({1}, std::numeric_limits<int64_t>::max(), values.options());
  OBJX_LAUNCH((n + kThreads - 1) / kThreads, kThreads, 0, nullptr, atomic_min_kernel)(
      reinterpret_cast<const unsigned long long*>(v.const_data_ptr<int64_t>()), n,
      reinterpret_cast<unsigned long long*>(slot.mutable_data_ptr<int64_t>()));
  return slot[0];
}

}  // namespace
}  // namespace objx::sim::selftest

TORCH_LIBRARY(objx_sim, m) {
  m.def("block_sum(Tensor x, bool barrier) -> Tensor");
  m.def("warp_sum(Tensor x) -> Tensor");
  m.def("out_of_bounds(Tensor x, int past) -> Tensor");
  m.def("atomic_min(Tensor values) -> Tensor");
}

TORCH_LIBRARY_IMPL(objx_sim, CPU, m) {
  m.impl("block_sum", &objx::sim::selftest::block_sum);
  m.impl("warp_sum", &objx::sim::selftest::warp_sum);
  m.impl("out_of_bounds", &objx::sim::selftest::out_of_bounds);
  m.impl("atomic_min", &objx::sim::selftest::atomic_min);
}
#endif  // OBJX_CUDA_SIM && !__CUDACC__
