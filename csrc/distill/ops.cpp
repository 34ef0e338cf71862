// The distill ops' entry file (SPEC §2): argument checks, then the device's kernels
// (distill/cpu.cpp, distill/cuda.cu).
#include "distill/distill.h"

#include <cmath>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "common/acc_type.h"
#include "common/kernels.h"
#include "common/nvtx.h"
#include "row_lse/row_lse.h"

namespace objx {
namespace {

math::DistillMethod parse_method(const std::string& name) {
  using M = math::DistillMethod;
  if (name == "ttm") return M::kTtm;
  if (name == "wttm") return M::kWttm;
  if (name == "kd") return M::kKd;
  if (name == "forward_kl") return M::kForwardKl;
  if (name == "reverse_kl") return M::kReverseKl;
  if (name == "jsd") return M::kJsd;
  if (name == "tvd") return M::kTvd;
  TORCH_CHECK_VALUE(false, "objx.distill_loss: method must be one of 'ttm', 'wttm', 'kd', 'forward_kl', "
                    "'reverse_kl', 'jsd', 'tvd', got '", name, "'");
}

}  // namespace

void check_distill_options(const DistillOptions& opt, const std::optional<at::Tensor>& target, int64_t rows,
                           const at::Device& device, const char* rows_name) {
  constexpr const char* fn = "objx.distill_loss";
  if (target) {
    TORCH_CHECK_TYPE(target->scalar_type() == at::kLong, fn, ": target must be int64, got ", target->scalar_type());
    TORCH_CHECK_VALUE(target->dim() == 1 && target->size(0) == rows, fn, ": target must be 1-D with N = ", rows,
                      " entries (", rows_name, "' rows), got shape ", target->sizes());
    TORCH_CHECK_VALUE(target->device() == device, fn, ": target is on ", target->device(), " but ", rows_name,
                      " is on ", device);
  }
  parse_method(opt.method);
  TORCH_CHECK_VALUE(opt.temperature > 0 && std::isfinite(opt.temperature), fn,
                    ": temperature must be a finite number > 0, got ", opt.temperature);
  TORCH_CHECK_VALUE(opt.beta >= 0 && opt.beta <= 1, fn, ": beta must be in [0, 1], got ", opt.beta);
  TORCH_CHECK_VALUE(std::isfinite(opt.hard_weight) && std::isfinite(opt.soft_weight), fn,
                    ": hard_weight and soft_weight must be finite");
  TORCH_CHECK_VALUE(target || opt.hard_weight == 0, fn, ": hard_weight is ", opt.hard_weight,
                    " but no target was given (pass target, or hard_weight=0)");
}

namespace {

// Student/teacher logits [N, V] or [B, T, V]: the same dtype, device, rows and V.
void check_logits(const at::Tensor& student, const at::Tensor& teacher) {
  constexpr const char* fn = "objx.distill_loss";
  TORCH_CHECK_VALUE(student.dim() == 2 || student.dim() == 3, fn,
                    ": student_logits must be [N, V] or [B, T, V], got shape ", student.sizes());
  TORCH_CHECK_VALUE(teacher.dim() == 2 || teacher.dim() == 3, fn,
                    ": teacher_logits must be [N, V] or [B, T, V], got shape ", teacher.sizes());
  TORCH_CHECK_TYPE(kernel_dtype(student.scalar_type()), fn,
                   ": student_logits must be float64, float32, bfloat16 or float16, got ", student.scalar_type());
  TORCH_CHECK_TYPE(teacher.scalar_type() == student.scalar_type(), fn, ": teacher_logits is ",
                   teacher.scalar_type(), " but student_logits is ", student.scalar_type(),
                   " (cast one to the other)");
  TORCH_CHECK_VALUE(vocab_size(teacher) == vocab_size(student), fn, ": vocabulary mismatch: student_logits has V = ",
                    vocab_size(student), ", teacher_logits has V = ", vocab_size(teacher));
  TORCH_CHECK_VALUE(row_count(teacher) == row_count(student), fn, ": teacher_logits has ", row_count(teacher),
                    " rows, student_logits has ", row_count(student));
  TORCH_CHECK_VALUE(teacher.device() == student.device(), fn, ": teacher_logits is on ", teacher.device(),
                    " but student_logits is on ", student.device());
  TORCH_CHECK_VALUE(vocab_size(student) > 0 || row_count(student) == 0, fn, ": empty vocabulary (V = 0)");
}

}  // namespace

template <typename acc_t>
math::DistillParams<acc_t> make_distill_params(const DistillOptions& opt, int64_t vocab, bool has_target) {
  auto method = parse_method(opt.method);
  // SPEC §2: jsd with beta = 0 is forward_kl, with beta = 1 reverse_kl (TRL's and Liger's convention).
  if (method == math::DistillMethod::kJsd && opt.beta == 0) method = math::DistillMethod::kForwardKl;
  if (method == math::DistillMethod::kJsd && opt.beta == 1) method = math::DistillMethod::kReverseKl;
  return {method,
          static_cast<acc_t>(opt.temperature),
          static_cast<acc_t>(opt.beta),
          static_cast<acc_t>(opt.hard_weight),
          static_cast<acc_t>(opt.soft_weight),
          opt.ignore_index,
          vocab,
          has_target};
}
template math::DistillParams<float> make_distill_params<float>(const DistillOptions&, int64_t, bool);
template math::DistillParams<double> make_distill_params<double>(const DistillOptions&, int64_t, bool);

DistillInputs prepare_distill_inputs(const at::Tensor& student, const at::Tensor& teacher,
                                     const std::optional<at::Tensor>& target, DistillOptions opt) {
  check_logits(student, teacher);
  check_distill_options(opt, target, row_count(student), student.device(), "student_logits");
  return {std::move(opt), kernel_rows(student, "objx.distill_loss", "student_logits"),
          kernel_rows(teacher, "objx.distill_loss", "teacher_logits"), target ? target->contiguous() : at::Tensor(),
          target.has_value()};
}

DistillSaved prepare_distill_saved(const at::Tensor& rows_like, const at::Tensor& grad_loss, const at::Tensor& stats,
                                   const at::Tensor& counted) {
  const int64_t rows = row_count(rows_like);
  const auto acc = acc_dtype(rows_like.scalar_type());
  TORCH_CHECK_VALUE(grad_loss.dim() == 1 && grad_loss.size(0) == rows, "objx.distill_backward: grad_loss must be [",
                    rows, "], got ", grad_loss.sizes());
  TORCH_CHECK_VALUE(stats.dim() == 2 && stats.size(0) == rows && stats.size(1) == math::kDistillRowStats &&
                        stats.scalar_type() == acc,
                    "objx.distill_backward: stats must be [", rows, ", ", math::kDistillRowStats, "] ", acc);
  TORCH_CHECK_VALUE(counted.dim() == 1 && counted.size(0) == rows && counted.scalar_type() == at::kBool,
                    "objx.distill_backward: counted must be bool [", rows, "]");
  for (const auto* t : {&grad_loss, &stats, &counted})
    TORCH_CHECK_VALUE(t->device() == rows_like.device(), "objx.distill_backward: saved rows are on ", t->device(),
                      " but the student's inputs are on ", rows_like.device());
  return {grad_loss.to(acc).contiguous(), stats.contiguous(), counted.contiguous()};
}

DistillForward allocate_distill_forward(int64_t rows, const at::TensorOptions& acc_options) {
  return {at::empty({rows}, acc_options), at::empty({rows}, acc_options), at::empty({rows}, acc_options),
          at::empty({rows, math::kDistillRowStats}, acc_options), at::empty({rows}, acc_options.dtype(at::kBool))};
}

void raise_distill_row_errors(const RowErrors& errors, const at::Tensor& target, int64_t vocab, int64_t ignore_index,
                              const at::Tensor& row_numbers) {
  const auto found = errors.read("objx.distill_loss", target, vocab, ignore_index, row_numbers);
  TORCH_CHECK_VALUE(found.empty_row < 0, "objx.distill_loss: student_logits row ", found.empty_row,
                    " is -inf everywhere but counts");
  TORCH_CHECK_VALUE(found.empty_other < 0, "objx.distill_loss: teacher_logits row ", found.empty_other,
                    " is -inf everywhere but counts (the teacher puts probability 0 on every token)");
}

namespace {

template <const DistillKernels& K>
DistillForward distill_forward(const at::Tensor& student, const at::Tensor& teacher,
                               const std::optional<at::Tensor>& target, std::string method, double temperature,
                               double beta, double hard_weight, double soft_weight, int64_t ignore_index) {
  NvtxRange range("objx::distill_forward");
  const auto in = prepare_distill_inputs(student, teacher, target,
                                         {std::move(method), temperature, beta, hard_weight, soft_weight, ignore_index});
  RowErrors errors(student.options());
  auto out = K.forward(in, errors);
  raise_distill_row_errors(errors, in.target, in.vocab, ignore_index);
  return out;
}

template <const DistillKernels& K>
at::Tensor distill_backward(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                            const std::optional<at::Tensor>& target, const at::Tensor& stats, const at::Tensor& counted,
                            std::string method, double temperature, double beta, double hard_weight,
                            double soft_weight, int64_t ignore_index) {
  NvtxRange range("objx::distill_backward");
  const auto in = prepare_distill_inputs(
      student, teacher, target, {std::move(method), temperature, beta, hard_weight, soft_weight, ignore_index});
  return K.backward(in, prepare_distill_saved(in.student, grad_loss, stats, counted));
}

template <const DistillKernels& K>
at::Tensor distill_shard_sums(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& row_lse,
                              std::string method, double temperature, double beta) {
  NvtxRange range("objx::distill_shard_sums");
  const auto in = prepare_distill_inputs(student, teacher, std::nullopt,
                                         {std::move(method), temperature, beta, 0.0, 1.0, -100});
  check_shard_row_lse("objx.distill_shard_sums", in.student, row_lse);
  return K.shard_sums(in, row_lse.contiguous());
}

template <const DistillKernels& K>
void register_ops(torch::Library& m) {
  m.impl("distill_forward", &distill_forward<K>);
  m.impl("distill_backward", &distill_backward<K>);
  m.impl("distill_shard_sums", &distill_shard_sums<K>);
}

}  // namespace

OBJX_REGISTER(register_ops, kCpuDistillKernels, kCudaDistillKernels)

}  // namespace objx
