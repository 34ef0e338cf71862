// The vocab_divergence ops' entry file (SPEC §3.4): argument checks, then the device's kernels
// (divergence/cpu.cpp, divergence/cuda.cu).
#include "divergence/divergence.h"

#include <cmath>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "common/acc_type.h"
#include "common/kernels.h"
#include "common/nvtx.h"
#include "common/row_layout.h"
#include "row_lse/row_lse.h"

namespace objx {
namespace {

constexpr const char* kFn = "objx.vocab_divergence";

math::DivKind parse_kind(const std::string& kind) {
  using K = math::DivKind;
  if (kind == "kl") return K::kKl;
  if (kind == "reverse_kl") return K::kReverseKl;
  if (kind == "js") return K::kJs;
  if (kind == "hellinger") return K::kHellinger;
  if (kind == "bhattacharyya") return K::kBhattacharyya;
  if (kind == "renyi") return K::kRenyi;
  if (kind == "alpha") return K::kAlpha;
  if (kind == "tv") return K::kTv;
  TORCH_CHECK_VALUE(false, kFn, ": kind must be one of 'kl', 'reverse_kl', 'js', 'hellinger', 'bhattacharyya', "
                    "'renyi', 'alpha', 'tv', got '", kind, "'");
}

DivInputs prepare(const at::Tensor& policy, const at::Tensor& ref, std::string kind, double alpha,
                  const std::optional<at::Tensor>& mask) {
  TORCH_CHECK_VALUE(policy.dim() == 2 || policy.dim() == 3, kFn,
                    ": policy_logits must be [N, V] or [B, T, V], got shape ", policy.sizes());
  TORCH_CHECK_VALUE((ref.dim() == 2 || ref.dim() == 3) && row_count(ref) == row_count(policy) &&
                        vocab_size(ref) == vocab_size(policy),
                    kFn, ": ref_logits must have policy_logits' rows and vocabulary (", row_count(policy), " x ",
                    vocab_size(policy), ", shape ", policy.sizes(), "), got shape ", ref.sizes());
  TORCH_CHECK_TYPE(kernel_dtype(policy.scalar_type()), kFn,
                   ": policy_logits must be float64, float32, bfloat16 or float16, got ", policy.scalar_type());
  TORCH_CHECK_TYPE(ref.scalar_type() == policy.scalar_type(), kFn, ": ref_logits is ", ref.scalar_type(),
                   " but policy_logits is ", policy.scalar_type());
  TORCH_CHECK_VALUE(ref.device() == policy.device(), kFn, ": ref_logits is on ", ref.device(),
                    " but policy_logits is on ", policy.device());
  TORCH_CHECK_VALUE(vocab_size(policy) > 0 || row_count(policy) == 0, kFn, ": empty vocabulary (V = 0)");
  const auto k = parse_kind(kind);
  if (k == math::DivKind::kRenyi)
    TORCH_CHECK_VALUE(alpha > 0 && alpha != 1 && std::isfinite(alpha), kFn,
                      ": renyi needs div_alpha > 0 and != 1, got ", alpha);
  if (k == math::DivKind::kAlpha)
    TORCH_CHECK_VALUE(alpha != 0 && alpha != 1 && std::isfinite(alpha), kFn,
                      ": alpha needs div_alpha not in {0, 1}, got ", alpha);
  if (mask) {
    TORCH_CHECK_TYPE(mask->scalar_type() == at::kBool, kFn, ": mask must be bool, got ", mask->scalar_type());
    TORCH_CHECK_VALUE(mask->dim() == 1 && mask->size(0) == row_count(policy), kFn, ": mask must be [N] with N = ",
                      row_count(policy), ", got shape ", mask->sizes());
    TORCH_CHECK_VALUE(mask->device() == policy.device(), kFn, ": mask is on ", mask->device(),
                      " but policy_logits is on ", policy.device());
  }
  return {std::move(kind), alpha, kernel_rows(policy, kFn, "policy_logits"), kernel_rows(ref, kFn, "ref_logits"),
          mask ? mask->contiguous() : at::Tensor()};
}

// A row that mask keeps whose policy or reference logits are -inf everywhere is not a distribution
// (its D would be NaN). The forward's stats hold both log-sum-exps (0 where masked out): one
// device-to-host read of two flags per call, the row's number only on the error path.
void check_whole_rows(const at::Tensor& stats) {
  const at::Tensor empty = at::isneginf(stats.narrow(1, 0, 2));
  const at::Tensor found = empty.any(0).cpu();
  const bool* f = found.const_data_ptr<bool>();
  if (!f[0] && !f[1]) return;
  const int which = f[0] ? 0 : 1;
  const int64_t row = empty.select(1, which).nonzero().select(1, 0)[0].item<int64_t>();
  TORCH_CHECK_VALUE(false, kFn, ": ", which == 0 ? "policy_logits" : "ref_logits", " row ", row,
                    " is -inf everywhere (probability 0 on every token) and the mask does not leave it out");
}

template <const DivKernels& K>
DivForward vocab_divergence_forward(const at::Tensor& policy, const at::Tensor& ref, std::string kind,
                                    double div_alpha, const std::optional<at::Tensor>& mask, bool whole_rows) {
  NvtxRange range("objx::vocab_divergence_forward");
  auto out = K.forward(prepare(policy, ref, std::move(kind), div_alpha, mask));
  if (whole_rows && row_count(policy) > 0) check_whole_rows(std::get<1>(out));
  return out;
}

template <const DivKernels& K>
at::Tensor vocab_divergence_backward(const at::Tensor& grad_div, const at::Tensor& policy, const at::Tensor& ref,
                                     const at::Tensor& stats, std::string kind, double div_alpha,
                                     const std::optional<at::Tensor>& mask) {
  NvtxRange range("objx::vocab_divergence_backward");
  const auto in = prepare(policy, ref, std::move(kind), div_alpha, mask);
  const int64_t rows = in.rows;
  const auto acc = acc_dtype(in.policy.scalar_type());
  TORCH_CHECK_VALUE(grad_div.dim() == 1 && grad_div.size(0) == rows, kFn, "_backward: grad must be [", rows,
                    "], got ", grad_div.sizes());
  TORCH_CHECK_VALUE(stats.dim() == 2 && stats.size(0) == rows && stats.size(1) == math::kDivRowStats &&
                        stats.scalar_type() == acc && stats.device() == in.policy.device(),
                    kFn, "_backward: stats must be [", rows, ", ", math::kDivRowStats, "] ", acc);
  const auto g = grad_div.to(acc).contiguous();
  return K.backward(in, g, stats.contiguous());
}

template <const DivKernels& K>
at::Tensor vocab_divergence_shard_sums(const at::Tensor& policy, const at::Tensor& ref, const at::Tensor& row_lse,
                                       std::string kind, double div_alpha, const std::optional<at::Tensor>& mask) {
  NvtxRange range("objx::vocab_divergence_shard_sums");
  const auto in = prepare(policy, ref, std::move(kind), div_alpha, mask);
  check_shard_row_lse("objx.vocab_divergence_shard_sums", in.policy, row_lse);
  return K.shard_sums(in, row_lse.contiguous());
}

template <const DivKernels& K>
void register_ops(torch::Library& m) {
  m.impl("vocab_divergence_forward", &vocab_divergence_forward<K>);
  m.impl("vocab_divergence_backward", &vocab_divergence_backward<K>);
  m.impl("vocab_divergence_shard_sums", &vocab_divergence_shard_sums<K>);
}

}  // namespace

template <typename acc_t>
math::DivParams<acc_t> make_div_params(const DivInputs& in) {
  return {parse_kind(in.kind), static_cast<acc_t>(in.alpha), in.vocab};
}
template math::DivParams<float> make_div_params<float>(const DivInputs&);
template math::DivParams<double> make_div_params<double>(const DivInputs&);

OBJX_REGISTER(register_ops, kCpuDivKernels, kCudaDivKernels)

}  // namespace objx
