#pragma once
// Host-side helpers of the fused LM-head losses: which rows take part, and the GEMMs that make
// logits tiles from hidden states and multiply gradient tiles back out.
#include <algorithm>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/Config.h>

#if AT_MKLDNN_ENABLED() && defined(__x86_64__)
#define OBJX_ONEDNN_GEMM 1
namespace at::native {
// ATen's oneDNN matmul, result = beta * result + alpha * mat1 @ mat2: exported by libtorch_cpu but
// declared in ATen/native/mkldnn/Matmul.h, which torch does not install. objx builds against one
// torch release and requires it exactly (python/build_support/torch_pin.py).
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta, float alpha);
}  // namespace at::native
#endif

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

// oneDNN takes a 2-D operand as it is when contiguous or transposed (else ATen copies it first).
inline bool onednn_layout(const at::Tensor& t) {
  return t.is_contiguous() || (t.stride(0) == 1 && t.stride(1) == t.size(0));
}

#ifdef OBJX_ONEDNN_GEMM
// Whether ATen's oneDNN matmul runs here: it refuses CPUs without AVX-512 (BW, VL, DQ) or
// AVX-NE-CONVERT (an AVX2 AMD EPYC: "mkldnn_matmul bf16 path needs the cpu support ..."), by checks
// that are not part of any installed header, so one 1 x 1 GEMM asks, once per process.
inline bool onednn_gemm_runs() {
  static const bool runs = [] {
    try {
      const auto one = at::ones({1, 1}, at::kFloat);
      at::native::mkldnn_matmul(one, one, at::empty({1, 1}, at::kFloat), 0.0f, 1.0f);
      return true;
    } catch (const c10::Error&) {
      return false;
    }
  }();
  return runs;
}
#endif

// out = a @ b, or out += a @ b, all of one dtype. Large float32 GEMMs on CPU go to oneDNN where it
// runs: on an AMD EPYC with AVX-512 it ran the head's three GEMM shapes 15-50% faster than ATen's
// BLAS (MKL), with results that do not change with the thread count. Small ones stay with BLAS,
// which calls faster (one-column tiles make 256000 of them); so does everything where oneDNN's
// matmul refuses the CPU.
inline void gemm_out(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
#ifdef OBJX_ONEDNN_GEMM
  constexpr int64_t kOneDnnMinMacs = int64_t(1) << 24;
  if (!a.is_cuda() && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
      out.scalar_type() == at::kFloat && out.is_contiguous() && onednn_layout(a) && onednn_layout(b) &&
      a.size(0) * a.size(1) * b.size(1) >= kOneDnnMinMacs && onednn_gemm_runs()) {
    at::native::mkldnn_matmul(a, b, out, accumulate ? 1.0f : 0.0f, 1.0f);
    return;
  }
#endif
  if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::mm_out(out, a, b);
  }
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
    if (a.scalar_type() != acc) return at::mm(a, b, acc);
    auto out = at::empty({a.size(0), b.size(1)}, a.options());
    gemm_out(out, a, b, /*accumulate=*/false);
    return out;
  }
  // out (+)= a @ b, out a contiguous block. In the GEMM's dtype, or float32 for a bf16/fp16 GEMM (CUDA
  // only), in place: cuBLAS accumulates into out with beta = 1, so no [rows, cols] float32 product is
  // allocated and added per row block or tile. A lower-precision out (the CPU's upcast GEMMs writing
  // bf16 gradients) takes the product rounded.
  void mm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool accumulate) const {
    const bool same = out.scalar_type() == a.scalar_type();
    if (same || (out.scalar_type() == acc && a.is_cuda())) {
      if (same) {
        gemm_out(out, a, b, accumulate);
      } else if (accumulate) {
        at::addmm_out(out, out, a, b, acc, /*beta=*/1, /*alpha=*/1);
      } else {
        at::mm_out(out, a, b, acc);
      }
    } else if (accumulate) {
      out.add_(mm_acc(a, b));
    } else {
      out.copy_(mm_acc(a, b));
    }
  }
  // grad_hidden's sum over the vocabulary, out [rows, D] (+)= a [rows, vc] @ b [vc, D], for an out in
  // vocab_sum_dtype. One float32 GEMM's rounding grows with its inner dimension (BLAS was 1.5e-5 to
  // 2e-4 relative off float64 at V = 256000), so the result would depend on how V is tiled: on CPU
  // the sum is float32 GEMMs of kVocabSumColumns columns added in float64. Narrower pieces were no
  // more accurate (with grad_hidden_into's target column apart) but slower: 1024 columns took the
  // 512 x 512 x 32000 GEMM from ~210 to ~450 ms here. On CUDA the tile goes to cuBLAS whole; only
  // a sum over several tiles is float64.
  static constexpr int64_t kVocabSumColumns = 2048;
  at::ScalarType vocab_sum_dtype(bool several_tiles) const {
    return acc == at::kFloat && (several_tiles || !weight.is_cuda()) ? at::kDouble : acc;
  }
  void vocab_sum_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool accumulate) const {
    if (a.is_cuda() || out.scalar_type() == a.scalar_type()) return mm_into(out, a, b, accumulate);
    TORCH_INTERNAL_ASSERT(out.is_contiguous() && out.scalar_type() == at::kDouble && a.scalar_type() == at::kFloat);
    auto piece = at::empty({a.size(0), b.size(1)}, a.options());  // reused by every piece
    double* sum = out.mutable_data_ptr<double>();
    const float* part = piece.const_data_ptr<float>();
    for (int64_t k0 = 0; k0 < a.size(1); k0 += kVocabSumColumns) {
      const int64_t kc = std::min(kVocabSumColumns, a.size(1) - k0);
      gemm_out(piece, a.narrow(1, k0, kc), b.narrow(0, k0, kc), /*accumulate=*/false);
      // A plain serial loop (rows x D adds, ~0.2 ms at 512 x 512): ATen's mixed-dtype add_ took ~10 ns
      // an element here, and a parallel region per piece waits on a busy core's scheduling.
      const bool add = accumulate || k0 > 0;
      for (int64_t i = 0; i < piece.numel(); ++i) sum[i] = (add ? sum[i] : 0.0) + part[i];
    }
  }
  // grad_hidden (+)= g @ weight[v0, v0 + vc) for a gradient tile g whose rows have targets y (undefined:
  // none). A target's column (p_y - 1 under cross-entropy) is its row's largest term by far: summed in
  // the same float32 GEMM, the small terms round to its ulp (2e-6 relative over 1024 columns at
  // V = 256000, against SPEC's 1e-6 for any tiling). Tiles of kGoldApartColumns or more columns take
  // it out of g for the GEMM and add it in out's dtype after (narrower ones round little, and the
  // gather costs more than their GEMM); g holds the same values on return.
  static constexpr int64_t kGoldApartColumns = 64;
  void grad_hidden_into(at::Tensor out, at::Tensor& g, const at::Tensor& y, int64_t v0, bool accumulate) const {
    const int64_t vc = g.size(1);
    const auto w = w_rows(v0, vc);
    if (!y.defined() || vc < kGoldApartColumns || g.size(0) == 0) return vocab_sum_into(out, g, w, accumulate);
    const auto local = y - v0;
    const auto inside = ((local >= 0) & (local < vc)).unsqueeze(1);  // a bad target lies in no tile
    const auto column = local.clamp(0, vc - 1).unsqueeze(1);
    const auto gold = g.gather(1, column);
    g.scatter_(1, column, gold.masked_fill(inside, 0));
    vocab_sum_into(out, g, w, accumulate);
    g.scatter_(1, column, gold);
    out.addcmul_(gold.masked_fill(inside.logical_not(), 0).to(out.scalar_type()),
                 w.index_select(0, column.squeeze(1)).to(out.scalar_type()));
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
