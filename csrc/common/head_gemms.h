#pragma once
// Host-side helpers of the fused LM-head losses: which rows take part, and the GEMMs that make
// logits tiles from hidden states and multiply gradient tiles back out.
#include <optional>

#include <ATen/ATen.h>

namespace objx {

// The rows that are not ignored, so ignored rows cost no GEMM work. `all` avoids a gather when
// every row counts (the usual case for packed sequences).
struct Rows {
  at::Tensor index;  // positions in [0, N) of the kept rows
  bool all;
  at::Tensor take(const at::Tensor& t) const { return all ? t : t.index_select(0, index); }
  // The caller's row number of each kept row (undefined when all rows are kept: the same numbers).
  at::Tensor numbers() const { return all ? at::Tensor() : index; }
  // [n, ...] rows back into [N, ...], `fill` elsewhere.
  at::Tensor put(const at::Tensor& rows, int64_t total, const at::Scalar& fill) const {
    if (all) return rows;
    auto sizes = rows.sizes().vec();
    sizes[0] = total;
    return at::full(sizes, fill, rows.options()).index_copy_(0, index, rows);
  }
};

inline Rows kept_rows(const at::Tensor& target, int64_t ignore_index) {
  const auto index = (target != ignore_index).nonzero().squeeze(1);
  return {index, index.size(0) == target.size(0)};
}

// The GEMMs of the fused head. Logits tiles come out in the accumulation dtype (SPEC: float32
// for bf16/fp16 inputs), as do the gradient sums over tiles; grad_weight rows come from one GEMM
// each. On CUDA bf16/fp16 GEMMs write float32 directly (mm.dtype); elsewhere low-precision inputs
// are upcast (the CPU has no fast bf16 GEMM to lose).
struct HeadGemms {
  at::Tensor h;  // kept rows, in gemm_dtype
  at::Tensor weight;
  std::optional<at::Tensor> bias;
  at::ScalarType acc;
  at::ScalarType gemm_dtype;

  HeadGemms(const at::Tensor& rows, const at::Tensor& w, const std::optional<at::Tensor>& b, at::ScalarType acc_dtype)
      : weight(w), bias(b), acc(acc_dtype) {
    const bool low = w.scalar_type() != acc_dtype;
    gemm_dtype = low && !w.is_cuda() ? acc_dtype : w.scalar_type();
    h = rows.to(gemm_dtype).contiguous();
  }
  at::Tensor w_rows(int64_t v0, int64_t vc) const { return weight.narrow(0, v0, vc).to(gemm_dtype); }
  // a @ b in the accumulation dtype.
  at::Tensor mm_acc(const at::Tensor& a, const at::Tensor& b) const {
    return a.scalar_type() == acc ? at::mm(a, b) : at::mm(a, b, acc);
  }
  // out (+)= a @ b, out a contiguous block. In the GEMM's dtype, or float32 for a bf16/fp16 GEMM (CUDA
  // only), in place: cuBLAS accumulates into out with beta = 1, so no [rows, cols] float32 product is
  // allocated and added per row block or tile. A lower-precision out (the CPU's upcast GEMMs writing
  // bf16 gradients) takes the product rounded.
  void mm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool accumulate) const {
    const bool same = out.scalar_type() == a.scalar_type();
    if (same || (out.scalar_type() == acc && a.is_cuda())) {
      if (accumulate) {
        same ? out.addmm_(a, b) : at::addmm_out(out, out, a, b, acc, /*beta=*/1, /*alpha=*/1);
      } else {
        same ? at::mm_out(out, a, b) : at::mm_out(out, a, b, acc);
      }
    } else if (accumulate) {
      out.add_(mm_acc(a, b));
    } else {
      out.copy_(mm_acc(a, b));
    }
  }
  at::Tensor logits(const at::Tensor& rows_h, int64_t v0, int64_t vc) const {
    auto tile = mm_acc(rows_h, w_rows(v0, vc).t());
    if (bias) tile.add_(bias->narrow(0, v0, vc));
    return tile;
  }
  // The gradient tile as the backward GEMMs' input.
  at::Tensor grad_input(const at::Tensor& tile) const { return tile.to(gemm_dtype); }
};

}  // namespace objx
