// The prob_loss ops' entry file (SPEC §1): argument checks, then the device's kernels (prob/cpu.cpp,
// prob/cuda.cu), registered for every device through one table.
#include "prob/prob.h"

#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "common/acc_type.h"
#include "common/kernels.h"
#include "common/nvtx.h"
#include "common/row_layout.h"

namespace objx {
namespace {

math::ObjectiveKind parse_objective(const std::string& name) {
  if (name == "nll") return math::ObjectiveKind::kNll;
  if (name == "power") return math::ObjectiveKind::kPower;
  if (name == "log1m") return math::ObjectiveKind::kLog1m;
  TORCH_CHECK_VALUE(false, "objx.prob_loss: objective must be one of 'nll', 'power', 'log1m', got '",
                    name, "'");
}

void check_prob_loss_inputs(const at::Tensor& logits, const at::Tensor& target,
                            const ProbLossOptions& opt) {
  TORCH_CHECK_VALUE(logits.dim() == 2 || logits.dim() == 3,
                    "objx.prob_loss: logits must be [N, V] or [B, T, V], got shape ", logits.sizes());
  TORCH_CHECK_TYPE(kernel_dtype(logits.scalar_type()),
                   "objx.prob_loss: logits must be float64, float32, bfloat16 or float16, got ",
                   logits.scalar_type());
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, "objx.prob_loss: target must be int64, got ",
                   target.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == row_count(logits),
                    "objx.prob_loss: target must be 1-D with N = ", row_count(logits),
                    " entries (logits is ", logits.sizes(), "), got shape ", target.sizes());
  TORCH_CHECK_VALUE(target.device() == logits.device(), "objx.prob_loss: target is on ",
                    target.device(), " but logits is on ", logits.device());
  TORCH_CHECK_VALUE(vocab_size(logits) > 0 || row_count(logits) == 0,
                    "objx.prob_loss: logits has an empty vocabulary (V = 0)");
  check_prob_loss_options(opt);
}

}  // namespace

void check_prob_loss_options(const ProbLossOptions& opt) {
  const auto kind = parse_objective(opt.objective);
  if (kind == math::ObjectiveKind::kPower)
    TORCH_CHECK_VALUE(opt.objective_param >= 0 && std::isfinite(opt.objective_param),
                      "objx.prob_loss: alpha must be a finite number >= 0, got ", opt.objective_param);
  if (kind == math::ObjectiveKind::kLog1m)
    TORCH_CHECK_VALUE(opt.objective_param > 0 && std::isfinite(opt.objective_param),
                      "objx.prob_loss: log1m epsilon must be > 0, got ", opt.objective_param);
  TORCH_CHECK_VALUE(opt.label_smoothing >= 0 && opt.label_smoothing <= 1,
                    "objx.prob_loss: label_smoothing must be in [0, 1], got ", opt.label_smoothing);
  TORCH_CHECK_VALUE(opt.label_smoothing == 0 || kind == math::ObjectiveKind::kNll,
                    "objx.prob_loss: label_smoothing is only defined for objective 'nll', got '",
                    opt.objective, "'");
  TORCH_CHECK_VALUE(opt.z_loss >= 0 && std::isfinite(opt.z_loss),
                    "objx.prob_loss: z_loss must be a finite number >= 0, got ", opt.z_loss);
  if (opt.softcap)
    TORCH_CHECK_VALUE(*opt.softcap > 0 && std::isfinite(*opt.softcap),
                      "objx.prob_loss: softcap must be a finite number > 0, got ", *opt.softcap);
  if (opt.min_prob)
    TORCH_CHECK_VALUE(*opt.min_prob >= 0 && *opt.min_prob <= 1,
                      "objx.prob_loss: min_prob must be in [0, 1], got ", *opt.min_prob);
  if (opt.max_prob)
    TORCH_CHECK_VALUE(*opt.max_prob >= 0 && *opt.max_prob <= 1,
                      "objx.prob_loss: max_prob must be in [0, 1], got ", *opt.max_prob);
  if (opt.min_prob && opt.max_prob)
    TORCH_CHECK_VALUE(*opt.min_prob <= *opt.max_prob, "objx.prob_loss: min_prob (", *opt.min_prob,
                      ") must not exceed max_prob (", *opt.max_prob, ")");
}

ProbLossSaved prepare_prob_loss_saved(const at::Tensor& rows_like, const at::Tensor& grad_loss,
                                      const at::Tensor& lse, const at::Tensor& logp,
                                      const at::Tensor& counted) {
  const auto n = row_count(rows_like);
  const auto acc = acc_dtype(rows_like.scalar_type());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"grad_loss", grad_loss},
                                {"lse", lse}, {"token_logprob", logp}, {"counted", counted}}) {
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == n, "objx.prob_loss_backward: ", name,
                      " must have shape [", n, "], got ", t.sizes());
    TORCH_CHECK_VALUE(t.device() == rows_like.device(), "objx.prob_loss_backward: ", name, " is on ",
                      t.device(), " but the inputs are on ", rows_like.device());
  }
  TORCH_CHECK_TYPE(lse.scalar_type() == acc && logp.scalar_type() == acc,
                   "objx.prob_loss_backward: lse and token_logprob must be ", acc);
  TORCH_CHECK_TYPE(counted.scalar_type() == at::kBool, "objx.prob_loss_backward: counted must be bool");
  return {grad_loss.to(acc).contiguous(), lse.contiguous(), logp.contiguous(), counted.contiguous()};
}

ProbLossInputs prepare_prob_loss_inputs(const at::Tensor& logits, const at::Tensor& target,
                                        ProbLossOptions opt) {
  check_prob_loss_inputs(logits, target, opt);
  auto rows = kernel_rows(logits, "objx.prob_loss", "logits");
  const auto layout = row_layout(rows);
  return {std::move(opt), std::move(rows), target.contiguous(), layout, row_count(logits), vocab_size(logits)};
}

template <typename acc_t>
math::ProbLossParams<acc_t> make_prob_loss_params(const ProbLossOptions& opt, int64_t vocab) {
  constexpr acc_t inf = std::numeric_limits<acc_t>::infinity();
  auto kind = parse_objective(opt.objective);
  // power(alpha) tends to nll as alpha -> 0 (SPEC §1).
  // An alpha that the accumulation type cannot hold as a normal number (it would round to 0 or a
  // subnormal and give NaN) is that limit too.
  if (kind == math::ObjectiveKind::kPower &&
      std::abs(static_cast<acc_t>(opt.objective_param)) < std::numeric_limits<acc_t>::min())
    kind = math::ObjectiveKind::kNll;
  return {kind,
          static_cast<acc_t>(opt.objective_param),
          opt.min_prob ? static_cast<acc_t>(*opt.min_prob) : -inf,
          opt.max_prob ? static_cast<acc_t>(*opt.max_prob) : inf,
          static_cast<acc_t>(opt.label_smoothing),
          static_cast<acc_t>(opt.z_loss),
          opt.softcap ? static_cast<acc_t>(*opt.softcap) : acc_t(0),
          opt.ignore_index,
          vocab,
          opt.class_weight.defined() ? opt.class_weight.const_data_ptr<acc_t>() : nullptr,
          opt.class_weight.defined() ? opt.class_weight_sum.const_data_ptr<acc_t>() : nullptr};
}

void set_prob_class_weight(ProbLossOptions& opt, const std::optional<at::Tensor>& weight, const at::Tensor& rows_like,
                           int64_t vocab, const char* fn, const char* name) {
  if (!weight) return;
  TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == vocab, fn, ": ", name, " must be 1-D [V] with V = ",
                    vocab, ", got shape ", weight->sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(weight->scalar_type()), fn, ": ", name, " must be a floating-point tensor, got ",
                   weight->scalar_type());
  TORCH_CHECK_VALUE(weight->device() == rows_like.device(), fn, ": ", name, " is on ", weight->device(),
                    " but the inputs are on ", rows_like.device());
  opt.class_weight = weight->to(acc_dtype(rows_like.scalar_type())).contiguous();
  opt.class_weight_sum = opt.class_weight.sum().reshape({1});
}
template math::ProbLossParams<float> make_prob_loss_params<float>(const ProbLossOptions&, int64_t);
template math::ProbLossParams<double> make_prob_loss_params<double>(const ProbLossOptions&, int64_t);

ProbTileState prob_tile_state(int64_t rows, const at::TensorOptions& acc_options) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  const auto wide = acc_options.dtype(at::kDouble);  // the sums across tiles: math::prob_tiled_row_finish
  return {at::full({rows}, -inf, acc_options), at::zeros({rows}, wide), at::zeros({rows}, acc_options),
          at::zeros({rows}, wide), at::full({rows}, -inf, acc_options)};
}

ProbLossForward allocate_prob_loss_forward(int64_t rows, const at::TensorOptions& acc_options) {
  return {at::empty({rows}, acc_options), at::empty({rows}, acc_options), at::empty({rows}, acc_options),
          at::empty({rows}, acc_options.dtype(at::kBool)), at::empty({rows}, acc_options.dtype(at::kBool))};
}

void raise_prob_loss_row_errors(const RowErrors& errors, const at::Tensor& target, int64_t vocab,
                                int64_t ignore_index, const at::Tensor& row_numbers) {
  const auto found = errors.read("objx.prob_loss", target, vocab, ignore_index, row_numbers);
  TORCH_CHECK_VALUE(found.empty_row < 0, "objx.prob_loss: logits row ", found.empty_row,
                    " is -inf everywhere but its target counts (every token has probability 0)");
}

namespace {

template <const ProbKernels& K>
ProbLossForward prob_loss_forward(const at::Tensor& logits, const at::Tensor& target, std::string objective,
                                  double param, std::optional<double> min_prob, std::optional<double> max_prob,
                                  int64_t ignore_index, double label_smoothing, double z_loss,
                                  std::optional<double> softcap, const std::optional<at::Tensor>& class_weight) {
  NvtxRange range("objx::prob_loss_forward");
  auto in = prepare_prob_loss_inputs(
      logits, target, {std::move(objective), param, min_prob, max_prob, ignore_index, label_smoothing, z_loss, softcap});
  set_prob_class_weight(in.opt, class_weight, in.logits, in.vocab, "objx.prob_loss", "weight");
  RowErrors errors(logits.options());
  auto out = K.forward(in, errors);
  raise_prob_loss_row_errors(errors, in.target, in.vocab, ignore_index);
  return out;
}

template <const ProbKernels& K>
at::Tensor prob_loss_backward(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                              const at::Tensor& lse, const at::Tensor& logp, const at::Tensor& counted,
                              std::string objective, double param, int64_t ignore_index, double label_smoothing,
                              double z_loss, std::optional<double> softcap,
                              const std::optional<at::Tensor>& class_weight) {
  NvtxRange range("objx::prob_loss_backward");
  auto in = prepare_prob_loss_inputs(
      logits, target,
      {std::move(objective), param, std::nullopt, std::nullopt, ignore_index, label_smoothing, z_loss, softcap});
  set_prob_class_weight(in.opt, class_weight, in.logits, in.vocab, "objx.prob_loss", "weight");
  return K.backward(in, prepare_prob_loss_saved(in.logits, grad_loss, lse, logp, counted));
}

template <const ProbKernels& K>
void register_ops(torch::Library& m) {
  m.impl("prob_loss_forward", &prob_loss_forward<K>);
  m.impl("prob_loss_backward", &prob_loss_backward<K>);
}

}  // namespace

OBJX_REGISTER(register_ops, kCpuProbKernels, kCudaProbKernels)

}  // namespace objx
