// The fused LM-head prob_loss ops' entry file (SPEC §1.1): logits = hidden @ weight.T + bias are
// produced one vocabulary tile at a time by a GEMM and consumed by the prob_loss tile kernels, so
// the [N, V] logits never exist. Host code, the same for every device: ATen GEMMs plus the
// device's tile kernels (prob/cpu.cpp, prob/cuda.cu).
#include <algorithm>
#include <optional>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "common/acc_type.h"
#include "common/head_gemms.h"
#include "common/kernels.h"
#include "common/nvtx.h"
#include "prob/prob.h"

namespace objx {
namespace {

using LinearForward =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using LinearGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

void check_linear_inputs(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         const at::Tensor& target, int64_t tile_cols) {
  constexpr const char* fn = "objx.linear_prob_loss";
  TORCH_CHECK_VALUE(hidden.dim() == 2, fn, ": hidden must be 2-D [N, D], got shape ", hidden.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2, fn, ": weight must be 2-D [V, D], got shape ", weight.sizes());
  TORCH_CHECK_TYPE(kernel_dtype(hidden.scalar_type()), fn,
                   ": hidden must be float64, float32, bfloat16 or float16, got ", hidden.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == hidden.scalar_type(), fn, ": weight is ", weight.scalar_type(),
                   " but hidden is ", hidden.scalar_type());
  TORCH_CHECK_VALUE(weight.size(1) == hidden.size(1), fn, ": weight must be [V, D] with D = ", hidden.size(1),
                    " (hidden's last dim), got shape ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(0) > 0, fn, ": weight has an empty vocabulary (V = 0)");
  TORCH_CHECK_VALUE(weight.device() == hidden.device(), fn, ": weight is on ", weight.device(),
                    " but hidden is on ", hidden.device());
  if (bias) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), fn, ": bias must be [V] with V = ",
                      weight.size(0), ", got shape ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == hidden.scalar_type(), fn, ": bias is ", bias->scalar_type(),
                     " but hidden is ", hidden.scalar_type());
    TORCH_CHECK_VALUE(bias->device() == hidden.device(), fn, ": bias is on ", bias->device(),
                      " but hidden is on ", hidden.device());
  }
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, fn, ": target must be int64, got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == hidden.size(0), fn, ": target must be 1-D with N = ",
                    hidden.size(0), " entries, got shape ", target.sizes());
  TORCH_CHECK_VALUE(target.device() == hidden.device(), fn, ": target is on ", target.device(),
                    " but hidden is on ", hidden.device());
  TORCH_CHECK_VALUE(tile_cols > 0, fn, ": tile_size must be > 0, got ", tile_cols);
}

ProbLossForward scatter_forward(const ProbLossForward& kept, const Rows& rows, int64_t total) {
  const auto& [loss, lse, logp, counted, correct] = kept;
  return {rows.put(loss, total, 0), rows.put(lse, total, 0),
          rows.put(logp, total, -std::numeric_limits<double>::infinity()), rows.put(counted, total, false),
          rows.put(correct, total, false)};
}

// One call's checked inputs: the options, the kept rows and their targets, the GEMMs.
struct LinearCall {
  ProbLossOptions opt;
  Rows rows;
  HeadGemms gemm;
  at::Tensor y;  // targets of the kept rows
  int64_t total, vocab, dim;
  at::TensorOptions acc_opts;
};

LinearCall prepare_linear_call(const at::Tensor& hidden, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const at::Tensor& target, ProbLossOptions opt,
                               int64_t tile_cols, const std::optional<at::Tensor>& class_weight) {
  check_prob_loss_options(opt);
  check_linear_inputs(hidden, weight, bias, target, tile_cols);
  set_prob_class_weight(opt, class_weight, hidden, weight.size(0), "objx.linear_prob_loss", "ce_weight");
  const auto acc = acc_dtype(hidden.scalar_type());
  Rows rows = kept_rows(target, opt.ignore_index);
  HeadGemms gemm(rows.take(hidden), weight.contiguous(),
                 bias ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt, acc);
  at::Tensor y = rows.take(target).contiguous();
  return {std::move(opt), std::move(rows), std::move(gemm), std::move(y), hidden.size(0), weight.size(0),
          weight.size(1), hidden.options().dtype(acc)};
}

template <const ProbKernels& K>
LinearForward linear_prob_loss_forward(const at::Tensor& hidden_in, const at::Tensor& weight_in,
                                       const std::optional<at::Tensor>& bias_in, const at::Tensor& target_in,
                                       std::string objective, double param, std::optional<double> min_prob,
                                       std::optional<double> max_prob, int64_t ignore_index, double label_smoothing,
                                       double z_loss, std::optional<double> softcap, int64_t tile_cols,
                                       bool grad_in_forward, const std::optional<at::Tensor>& class_weight) {
  NvtxRange range("objx::linear_prob_loss_forward");
  // The GEMMs below are implementation detail: never recorded by autograd (objx registers the op's
  // own backward), even when this op is called directly with inputs that require grad.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const LinearCall call = prepare_linear_call(
      hidden_in, weight_in, bias_in, target_in,
      {std::move(objective), param, min_prob, max_prob, ignore_index, label_smoothing, z_loss, softcap}, tile_cols,
      class_weight);
  const auto& [opt, rows, gemm, y, total, vocab, dim, acc_opts] = call;
  const at::Tensor& h = gemm.h;
  const bool has_bias = gemm.bias.has_value();
  const int64_t n = h.size(0);
  const auto none = [&] { return at::empty({0}, acc_opts); };  // distinct tensors: outputs never alias

  if (!grad_in_forward) {
    // Vocabulary tiles over all kept rows: one GEMM per tile, then the tile kernel folds it in.
    auto state = prob_tile_state(n, acc_opts);
    for (int64_t v0 = 0; v0 < vocab; v0 += tile_cols) {
      const int64_t vc = std::min(tile_cols, vocab - v0);
      K.tile_reduce(gemm.logits(h, v0, vc), y, v0, opt, state);
    }
    RowErrors errors(acc_opts);
    const auto fwd = K.tile_finish(state, y, opt, vocab, errors);
    raise_prob_loss_row_errors(errors, y, vocab, opt.ignore_index, rows.numbers());
    const auto [loss, lse, logp, counted, correct] = scatter_forward(fwd, rows, total);
    return {loss, lse, logp, counted, correct, none(), none(), none()};
  }

  // Gradient in the forward (for a scalar-reduced loss): blocks of rows with every column, so each
  // logits tile is produced once and turned into its gradient in place; the block holds as many
  // logits as one tile of the tiled path (n rows x tile_cols columns).
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(n, tile_cols * std::max<int64_t>(n, 1) / vocab));
  auto grad_hidden = at::empty({n, dim}, acc_opts.dtype(gemm.vocab_sum_dtype(/*several_tiles=*/false)));
  // The first block writes grad_weight, the others add to it.
  auto grad_weight = n > 0 ? at::empty({vocab, dim}, acc_opts) : at::zeros({vocab, dim}, acc_opts);
  auto grad_bias = has_bias ? at::zeros({vocab}, acc_opts) : none();
  std::vector<at::Tensor> losses, lses, logps, counteds, corrects;
  RowErrors errors(acc_opts);  // read once, after the last block: no host synchronisation per block
  for (int64_t r0 = 0; r0 < n; r0 += block) {
    const int64_t nb = std::min(block, n - r0);
    const auto hb = h.narrow(0, r0, nb), yb = y.narrow(0, r0, nb);
    auto tile = gemm.logits(hb, 0, vocab);
    auto state = prob_tile_state(nb, acc_opts);
    K.tile_reduce(tile, yb, 0, opt, state);
    errors.row_offset = r0;
    auto fwd = K.tile_finish(state, yb, opt, vocab, errors);
    const auto& [loss, lse, logp, counted, correct] = fwd;
    K.tile_grad(tile, yb, 0, ProbLossSaved{at::ones({nb}, acc_opts), lse, logp, counted}, opt, vocab);
    if (has_bias) grad_bias.add_(tile.sum(0));
    auto g = gemm.grad_input(tile);
    gemm.grad_hidden_into(grad_hidden.narrow(0, r0, nb), g, yb, 0, /*accumulate=*/false);
    gemm.mm_into(grad_weight, g.t(), hb, /*accumulate=*/r0 > 0);
    losses.push_back(loss);
    lses.push_back(lse);
    logps.push_back(logp);
    counteds.push_back(counted);
    corrects.push_back(correct);
  }
  raise_prob_loss_row_errors(errors, y, vocab, opt.ignore_index, rows.numbers());
  const auto cat = [&](const std::vector<at::Tensor>& parts, const at::TensorOptions& o) {
    return parts.empty() ? at::empty({0}, o) : at::cat(parts);
  };
  const auto [loss, lse, logp, counted, correct] =
      scatter_forward({cat(losses, acc_opts), cat(lses, acc_opts), cat(logps, acc_opts),
                       cat(counteds, acc_opts.dtype(at::kBool)), cat(corrects, acc_opts.dtype(at::kBool))},
                      rows, total);
  return {loss, lse, logp, counted, correct, rows.put(grad_hidden.to(acc_opts.dtype()), total, 0), grad_weight,
          grad_bias};
}

template <const ProbKernels& K>
LinearGrads linear_prob_loss_backward(const at::Tensor& grad_loss, const at::Tensor& hidden_in,
                                      const at::Tensor& weight_in, const std::optional<at::Tensor>& bias_in,
                                      const at::Tensor& target_in, const at::Tensor& lse, const at::Tensor& logp,
                                      const at::Tensor& counted, std::string objective, double param,
                                      int64_t ignore_index, double label_smoothing, double z_loss,
                                      std::optional<double> softcap, int64_t tile_cols,
                                      const std::optional<at::Tensor>& class_weight) {
  NvtxRange range("objx::linear_prob_loss_backward");
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const LinearCall call = prepare_linear_call(
      hidden_in, weight_in, bias_in, target_in,
      {std::move(objective), param, std::nullopt, std::nullopt, ignore_index, label_smoothing, z_loss, softcap},
      tile_cols, class_weight);
  const auto& [opt, rows, gemm, y, total, vocab, dim, acc_opts] = call;
  const at::Tensor& h = gemm.h;
  const bool has_bias = gemm.bias.has_value();
  const auto acc = acc_opts.dtype().toScalarType();
  const ProbLossSaved all = prepare_prob_loss_saved(hidden_in, grad_loss, lse, logp, counted);
  const ProbLossSaved saved{rows.take(all.grad_loss), rows.take(all.lse), rows.take(all.logp), rows.take(all.counted)};

  // grad_hidden sums over the vocabulary, in float64 where the tiling could otherwise change it beyond
  // float32 rounding (HeadGemms::vocab_sum_into; 3e-5 relative over 256000 one-column tiles in float32).
  auto grad_hidden =
      at::zeros({h.size(0), dim}, hidden_in.options().dtype(gemm.vocab_sum_dtype(/*several_tiles=*/vocab > tile_cols)));
  auto grad_weight = at::empty({vocab, dim}, weight_in.options());
  auto grad_bias = at::empty({has_bias ? vocab : 0}, weight_in.options());
  for (int64_t v0 = 0; v0 < vocab; v0 += tile_cols) {
    const int64_t vc = std::min(tile_cols, vocab - v0);
    auto tile = gemm.logits(h, v0, vc);
    K.tile_grad(tile, y, v0, saved, opt, vocab);
    if (has_bias) grad_bias.narrow(0, v0, vc).copy_(tile.sum(0));
    // Each tile owns its rows of grad_weight: one GEMM writes them, accumulating in float32.
    auto g = gemm.grad_input(tile);
    gemm.grad_hidden_into(grad_hidden, g, y, v0, /*accumulate=*/true);
    gemm.mm_into(grad_weight.narrow(0, v0, vc), g.t(), h, /*accumulate=*/false);
  }
  return {rows.put(grad_hidden, total, 0).to(hidden_in.scalar_type()), grad_weight, grad_bias};
}

template <const ProbKernels& K>
void register_ops(torch::Library& m) {
  m.impl("linear_prob_loss_forward", &linear_prob_loss_forward<K>);
  m.impl("linear_prob_loss_backward", &linear_prob_loss_backward<K>);
}

}  // namespace

// GEMMs go to the device's BLAS through ATen (cuBLAS on CUDA).
OBJX_REGISTER(register_ops, kCpuProbKernels, kCudaProbKernels)

}  // namespace objx
