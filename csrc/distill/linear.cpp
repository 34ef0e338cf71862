// The entry file of distillation fused with both LM heads (SPEC §2.1): row blocks get their student
// and teacher logits from two GEMMs, the distill kernels reduce and differentiate the block, and
// the student's gradient is multiplied back out, so neither [N, V] logits tensor exists. Host code,
// the same for every device: ATen GEMMs plus the device's distill kernels.
#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "common/acc_type.h"
#include "common/head_gemms.h"
#include "common/kernels.h"
#include "common/nvtx.h"
#include "distill/distill.h"

namespace objx {
namespace {

using LinearDistillForward =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using LinearDistillGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

void check_head(const char* who, const at::Tensor& hidden, const at::Tensor& weight,
                const std::optional<at::Tensor>& bias, int64_t rows) {
  constexpr const char* fn = "objx.linear_distill_loss";
  TORCH_CHECK_VALUE(hidden.dim() == 2 && hidden.size(0) == rows, fn, ": ", who, "_hidden must be [N, D] with N = ",
                    rows, ", got shape ", hidden.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == hidden.size(1), fn, ": ", who,
                    "_weight must be [V, D] with D = ", hidden.size(1), " (", who, "_hidden's last dim), got shape ",
                    weight.sizes());
  TORCH_CHECK_TYPE(kernel_dtype(hidden.scalar_type()) && weight.scalar_type() == hidden.scalar_type(), fn, ": ",
                   who, "_hidden and ", who, "_weight must share a floating dtype, got ", hidden.scalar_type(),
                   " and ", weight.scalar_type());
  if (bias) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), fn, ": ", who, "_bias must be [V] with V = ",
                      weight.size(0), ", got shape ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == weight.scalar_type(), fn, ": ", who, "_bias must be ",
                     weight.scalar_type());
  }
  for (const at::Tensor* t : {&weight, bias ? &*bias : nullptr}) {
    if (t) TORCH_CHECK_VALUE(t->device() == hidden.device(), fn, ": ", who, " head tensors must be on ", hidden.device());
  }
}

struct LinearDistillCall {
  DistillOptions opt;
  Rows rows;
  HeadGemms student, teacher;
  at::Tensor y;  // targets of the kept rows (undefined without target)
  bool has_target;
  int64_t total, vocab, dim;
  at::TensorOptions acc_opts;
};

LinearDistillCall prepare_call(const at::Tensor& hs, const at::Tensor& ws, const std::optional<at::Tensor>& bs,
                               const at::Tensor& ht, const at::Tensor& wt, const std::optional<at::Tensor>& bt,
                               const std::optional<at::Tensor>& target, DistillOptions opt, int64_t row_block) {
  constexpr const char* fn = "objx.linear_distill_loss";
  const int64_t n = hs.size(0);
  check_head("student", hs, ws, bs, n);
  check_head("teacher", ht, wt, bt, n);
  TORCH_CHECK_VALUE(wt.size(0) == ws.size(0), fn, ": vocabulary mismatch: student_weight has V = ", ws.size(0),
                    ", teacher_weight has V = ", wt.size(0));
  TORCH_CHECK_VALUE(ht.device() == hs.device(), fn, ": teacher_hidden is on ", ht.device(), " but student_hidden is on ",
                    hs.device());
  TORCH_CHECK_VALUE(row_block > 0, fn, ": row_block must be > 0, got ", row_block);
  TORCH_CHECK_VALUE(ws.size(0) > 0 || n == 0, fn, ": empty vocabulary (V = 0)");
  check_distill_options(opt, target, n, hs.device(), "student_hidden");
  const auto acc = acc_dtype(hs.scalar_type());
  Rows rows = target ? kept_rows(*target, opt.ignore_index) : Rows{at::Tensor(), true};
  const auto contiguous_bias = [](const std::optional<at::Tensor>& b) {
    return b ? std::optional<at::Tensor>(b->contiguous()) : std::nullopt;
  };
  HeadGemms student(rows.take(hs), ws.contiguous(), contiguous_bias(bs), acc);
  HeadGemms teacher(rows.take(ht), wt.contiguous(), contiguous_bias(bt), acc_dtype(ht.scalar_type()));
  at::Tensor y = target ? rows.take(*target).contiguous() : at::Tensor();
  return {std::move(opt), std::move(rows), std::move(student), std::move(teacher), std::move(y), target.has_value(),
          n, ws.size(0), ws.size(1), hs.options().dtype(acc)};
}

// Student and teacher logits of kept rows [r0, r0 + nb), in the student's accumulation dtype.
DistillInputs block_inputs(const LinearDistillCall& c, int64_t r0, int64_t nb) {
  auto s = c.student.logits(c.student.h.narrow(0, r0, nb), 0, c.vocab);
  auto t = c.teacher.logits(c.teacher.h.narrow(0, r0, nb), 0, c.vocab).to(s.scalar_type());
  return {c.opt, std::move(s), std::move(t), c.has_target ? c.y.narrow(0, r0, nb) : at::Tensor(), c.has_target};
}

// grad_weight's buffer: the first of the n rows' blocks writes it, the others add to it (add_block_grads).
at::Tensor grad_weight_sum(const LinearDistillCall& c, int64_t n) {
  return n > 0 ? at::empty({c.vocab, c.dim}, c.acc_opts) : at::zeros({c.vocab, c.dim}, c.acc_opts);
}

// Multiplies a block's logits gradient back out into the student's hidden, weight and bias grads.
void add_block_grads(const LinearDistillCall& c, const at::Tensor& grad_logits, int64_t r0, at::Tensor& grad_hidden,
                     at::Tensor& grad_weight, at::Tensor& grad_bias) {
  const int64_t nb = grad_logits.size(0);
  if (c.student.bias) grad_bias.add_(grad_logits.sum(0));
  auto g = c.student.grad_input(grad_logits);
  const at::Tensor y = c.has_target ? c.y.narrow(0, r0, nb) : at::Tensor();  // the hard term's -1 at the target
  c.student.grad_hidden_into(grad_hidden.narrow(0, r0, nb), g, y, 0, /*accumulate=*/false);
  c.student.mm_into(grad_weight, g.t(), c.student.h.narrow(0, r0, nb), /*accumulate=*/r0 > 0);
}

template <const DistillKernels& K>
LinearDistillForward linear_distill_forward(
    const at::Tensor& hs, const at::Tensor& ws, const std::optional<at::Tensor>& bs, const at::Tensor& ht,
    const at::Tensor& wt, const std::optional<at::Tensor>& bt, const std::optional<at::Tensor>& target,
    std::string method, double temperature, double beta, double hard_weight, double soft_weight, int64_t ignore_index,
    int64_t row_block, bool grad_in_forward) {
  NvtxRange range("objx::linear_distill_forward");
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // the GEMMs are not recorded by autograd
  const auto c = prepare_call(hs, ws, bs, ht, wt, bt, target,
                              {std::move(method), temperature, beta, hard_weight, soft_weight, ignore_index},
                              row_block);
  const int64_t n = c.student.h.size(0);
  const auto none = [&] { return at::empty({0}, c.acc_opts); };
  // grad_hidden in HeadGemms::vocab_sum_dtype (float64 on CPU), rounded once at the end.
  const auto hidden_sum_opts = c.acc_opts.dtype(c.student.vocab_sum_dtype(/*several_tiles=*/false));
  at::Tensor grad_hidden = grad_in_forward ? at::empty({n, c.dim}, hidden_sum_opts) : none();
  at::Tensor grad_weight = grad_in_forward ? grad_weight_sum(c, n) : none();
  at::Tensor grad_bias = grad_in_forward && c.student.bias ? at::zeros({c.vocab}, c.acc_opts) : none();
  std::vector<at::Tensor> parts[5];
  RowErrors errors(c.acc_opts);  // read once, after the last block: no host synchronisation per block
  for (int64_t r0 = 0; r0 < n; r0 += row_block) {
    const int64_t nb = std::min(row_block, n - r0);
    const auto in = block_inputs(c, r0, nb);
    errors.row_offset = r0;
    const auto fwd = K.forward(in, errors);
    const auto& [loss, soft, hard, stats, counted] = fwd;
    for (auto [i, t] : {std::pair<int, const at::Tensor*>{0, &loss}, {1, &soft}, {2, &hard}, {3, &stats}, {4, &counted}})
      parts[i].push_back(*t);
    if (grad_in_forward) {
      const auto grad_logits = K.backward(in, DistillSaved{at::ones({nb}, c.acc_opts), stats, counted});
      add_block_grads(c, grad_logits, r0, grad_hidden, grad_weight, grad_bias);
    }
  }
  raise_distill_row_errors(errors, c.y, c.vocab, c.opt.ignore_index, c.rows.numbers());
  const auto empty_like_rows = allocate_distill_forward(0, c.acc_opts);
  const at::Tensor* empties[5] = {&std::get<0>(empty_like_rows), &std::get<1>(empty_like_rows),
                                  &std::get<2>(empty_like_rows), &std::get<3>(empty_like_rows),
                                  &std::get<4>(empty_like_rows)};
  const auto cat = [&](int i) { return parts[i].empty() ? *empties[i] : at::cat(parts[i]); };
  return {c.rows.put(cat(0), c.total, 0), c.rows.put(cat(1), c.total, 0), c.rows.put(cat(2), c.total, 0),
          c.rows.put(cat(3), c.total, 0), c.rows.put(cat(4), c.total, false),
          grad_in_forward ? c.rows.put(grad_hidden.to(c.acc_opts.dtype()), c.total, 0) : grad_hidden, grad_weight,
          grad_bias};
}

template <const DistillKernels& K>
LinearDistillGrads linear_distill_backward(
    const at::Tensor& grad_loss, const at::Tensor& hs, const at::Tensor& ws, const std::optional<at::Tensor>& bs,
    const at::Tensor& ht, const at::Tensor& wt, const std::optional<at::Tensor>& bt,
    const std::optional<at::Tensor>& target, const at::Tensor& stats, const at::Tensor& counted, std::string method,
    double temperature, double beta, double hard_weight, double soft_weight, int64_t ignore_index, int64_t row_block) {
  NvtxRange range("objx::linear_distill_backward");
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto c = prepare_call(hs, ws, bs, ht, wt, bt, target,
                              {std::move(method), temperature, beta, hard_weight, soft_weight, ignore_index},
                              row_block);
  const DistillSaved all = prepare_distill_saved(hs, grad_loss, stats, counted);
  const int64_t n = c.student.h.size(0);
  auto grad_hidden = at::empty({n, c.dim}, c.acc_opts.dtype(c.student.vocab_sum_dtype(/*several_tiles=*/false)));
  auto grad_weight = grad_weight_sum(c, n);
  auto grad_bias = at::zeros({c.student.bias ? c.vocab : 0}, c.acc_opts);
  const DistillSaved kept{c.rows.take(all.grad_loss), c.rows.take(all.stats), c.rows.take(all.counted)};
  for (int64_t r0 = 0; r0 < n; r0 += row_block) {
    const int64_t nb = std::min(row_block, n - r0);
    const auto in = block_inputs(c, r0, nb);
    const auto grad_logits = K.backward(
        in, DistillSaved{kept.grad_loss.narrow(0, r0, nb), kept.stats.narrow(0, r0, nb), kept.counted.narrow(0, r0, nb)});
    add_block_grads(c, grad_logits, r0, grad_hidden, grad_weight, grad_bias);
  }
  return {c.rows.put(grad_hidden, c.total, 0).to(hs.scalar_type()), grad_weight.to(ws.scalar_type()),
          grad_bias.to(ws.scalar_type())};
}

template <const DistillKernels& K>
void register_ops(torch::Library& m) {
  m.impl("linear_distill_forward", &linear_distill_forward<K>);
  m.impl("linear_distill_backward", &linear_distill_backward<K>);
}

}  // namespace

// GEMMs go to the device's BLAS through ATen (cuBLAS on CUDA).
OBJX_REGISTER(register_ops, kCpuDistillKernels, kCudaDistillKernels)

}  // namespace objx
