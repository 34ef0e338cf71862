// CPU kernels of vocab_divergence (SPEC §3.4): rows in parallel; per row one pass for both
// log-sum-exps, one for the divergence sums, and one in the backward for the gradient, each a piece
// of the row at a time through vectorised exps.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "common/acc_type.h"
#include "common/pair_piece.h"
#include "common/vec_row.h"
#include "divergence/divergence.h"
#include "math/divergence.h"
#include "math/online_lse.h"

namespace objx {
namespace {

using math::DivParams;
using math::DivRow;

using math::DivKind;

// Which probabilities a kind's pass needs beside the logs (each is one vectorised exp per entry).
struct Exps {
  bool p, q;
};

template <typename acc_t>
Exps sums_exps(const DivParams<acc_t>& prm) {
  switch (prm.kind) {
    case DivKind::kKl: return {true, false};
    case DivKind::kReverseKl: return {false, true};
    case DivKind::kHellinger:
    case DivKind::kBhattacharyya:
    case DivKind::kAlpha: return {false, false};
    case DivKind::kRenyi: return {math::renyi_near_one(prm.alpha), false};  // p for the excess
    default: return {true, true};  // js, tv
  }
}

Exps grad_exps(DivKind kind) {
  switch (kind) {
    case DivKind::kReverseKl:
    case DivKind::kJs:
    case DivKind::kTv: return {true, true};
    default: return {true, false};
  }
}

// The logs of entries [start, start + n) of a row into a piece, then the exps `need` asks for.
template <typename scalar_t, typename acc_t>
void load_piece(const scalar_t* z, const scalar_t* r, int64_t start, int64_t n, const DivRow<acc_t>& row, Exps need,
                PairPiece<acc_t>& piece) {
  for (int64_t i = 0; i < n; ++i) {
    piece.log_p[i] = static_cast<acc_t>(z[start + i]) - row.lse_p;
    piece.log_q[i] = static_cast<acc_t>(r[start + i]) - row.lse_q;
  }
  if (need.p) vec_exp(piece.log_p, n, piece.p);
  if (need.q) vec_exp(piece.log_q, n, piece.q);
}

// sqrt(p q) = exp((log p + log q) / 2) of a piece's entries, vectorised.
template <typename acc_t>
void root_products(const PairPiece<acc_t>& piece, int64_t n, acc_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = acc_t(0.5) * (piece.log_p[i] + piece.log_q[i]);
  vec_exp(out, n, out);
}

// One piece's pass-2 terms (math::div_terms), a loop per kind so that the common kinds vectorise;
// for renyi `aggs` holds log-space summands for a log-sum-exp (see reduce_sums).
template <typename acc_t>
void piece_terms(const DivParams<acc_t>& prm, const PairPiece<acc_t>& piece, int64_t n, acc_t* aggs, acc_t* pas) {
  switch (prm.kind) {
    case DivKind::kKl:
      for (int64_t i = 0; i < n; ++i) aggs[i] = math::xlogratio(piece.p[i], piece.log_p[i], piece.log_q[i]);
      std::fill(pas, pas + n, acc_t(0));
      return;
    case DivKind::kReverseKl:
      for (int64_t i = 0; i < n; ++i) aggs[i] = math::xlogratio(piece.q[i], piece.log_q[i], piece.log_p[i]);
      std::fill(pas, pas + n, acc_t(0));
      return;
    case DivKind::kHellinger:
    case DivKind::kBhattacharyya:
      root_products(piece, n, aggs);
      std::fill(pas, pas + n, acc_t(0));
      return;
    case DivKind::kRenyi:
      for (int64_t i = 0; i < n; ++i) aggs[i] = math::renyi_log_term(prm.alpha, piece.log_p[i], piece.log_q[i]);
      if (!math::renyi_near_one(prm.alpha)) {
        std::fill(pas, pas + n, acc_t(0));
        return;
      }
      for (int64_t i = 0; i < n; ++i) pas[i] = (prm.alpha - acc_t(1)) * (piece.log_p[i] - piece.log_q[i]);
      vec_expm1(pas, n, pas);
      for (int64_t i = 0; i < n; ++i) pas[i] = piece.p[i] == acc_t(0) ? acc_t(0) : piece.p[i] * pas[i];
      return;
    case DivKind::kAlpha:
      for (int64_t i = 0; i < n; ++i) aggs[i] = math::div_power_mean(prm.alpha, piece.log_p[i], piece.log_q[i]);
      std::fill(pas, pas + n, acc_t(0));
      return;
    default:
      for (int64_t i = 0; i < n; ++i) math::div_terms(prm, piece[i], aggs[i], pas[i]);
  }
}

// The pass-2 sums (agg, pa) of a row under row.lse_p, row.lse_q; for renyi agg = log S from the
// log-sum-exp of its summands and their excess (math::renyi_log_sum), pa = the excess.
template <typename scalar_t, typename acc_t>
void reduce_sums(const scalar_t* z, const scalar_t* r, int64_t vocab, const DivParams<acc_t>& prm, DivRow<acc_t>& row) {
  PairPiece<acc_t> piece;
  acc_t aggs[PairPiece<acc_t>::kSize], pas[PairPiece<acc_t>::kSize];
  const Exps need = sums_exps(prm);
  const bool renyi = prm.kind == DivKind::kRenyi;
  math::LseState<acc_t> log_s = math::lse_empty<acc_t>();
  double agg = 0.0, pa = 0.0;
  for (int64_t start = 0; start < vocab; start += PairPiece<acc_t>::kSize) {
    const int64_t n = std::min(PairPiece<acc_t>::kSize, vocab - start);
    load_piece(z, r, start, n, row, need, piece);
    piece_terms(prm, piece, n, aggs, pas);
    if (renyi)
      lse_absorb(log_s.max, log_s.sum, aggs, n);
    else
      agg += piece_sum(aggs, n);
    pa += piece_sum(pas, n);
  }
  row.pa = static_cast<acc_t>(pa);
  row.agg = renyi ? math::renyi_log_sum(prm.alpha, math::lse_finish(log_s), row.pa) : static_cast<acc_t>(agg);
}

// One piece's gradient d D / d z (math::div_grad) into out, vectorised for the common kinds.
template <typename acc_t>
void piece_grad(const DivParams<acc_t>& prm, const DivRow<acc_t>& row, const PairPiece<acc_t>& piece, int64_t n,
                acc_t* out) {
  switch (prm.kind) {
    case DivKind::kKl:
      for (int64_t i = 0; i < n; ++i) {
        const acc_t p = piece.p[i];
        out[i] = p == acc_t(0) ? acc_t(0) : p * (piece.log_p[i] - piece.log_q[i] - row.agg);
      }
      return;
    case DivKind::kHellinger:
      root_products(piece, n, out);
      for (int64_t i = 0; i < n; ++i) out[i] = acc_t(0.5) * (piece.p[i] * row.agg - out[i]);
      return;
    case DivKind::kBhattacharyya:
      root_products(piece, n, out);
      for (int64_t i = 0; i < n; ++i) out[i] = acc_t(0.5) * (piece.p[i] - out[i] / row.agg);
      return;
    case DivKind::kRenyi: {  // math::renyi_ratio_excess with both exps vectorised
      const acc_t c = prm.alpha / (prm.alpha - acc_t(1));
      if (!math::renyi_near_one(prm.alpha)) {  // w / S - p cancels at most as much as c amplifies
        for (int64_t i = 0; i < n; ++i)
          out[i] = math::renyi_log_term(prm.alpha, piece.log_p[i], piece.log_q[i]) - row.agg;
        vec_exp(out, n, out);
        for (int64_t i = 0; i < n; ++i) out[i] = c * (out[i] - piece.p[i]);
        return;
      }
      acc_t y[PairPiece<acc_t>::kSize], em1[PairPiece<acc_t>::kSize];
      for (int64_t i = 0; i < n; ++i) {
        y[i] = (prm.alpha - acc_t(1)) * (piece.log_p[i] - piece.log_q[i]) - row.agg;
        out[i] = math::renyi_log_term(prm.alpha, piece.log_p[i], piece.log_q[i]) - row.agg;
      }
      vec_expm1(y, n, em1);
      vec_exp(out, n, out);
      for (int64_t i = 0; i < n; ++i)
        out[i] = c * (std::fabs(y[i]) < acc_t(0.5) ? piece.p[i] * em1[i] : out[i] - piece.p[i]);
      return;
    }
    default:
      for (int64_t i = 0; i < n; ++i) out[i] = math::div_grad(prm, row, piece[i]);
  }
}

// kl, reverse_kl, hellinger and bhattacharyya in the log-sum-exps' own pass: their sums are
// exponentials of the logits under the running maxima, rescaled as the maxima move,
//   KL(p || q) = sum_j e^(z_j - m_p) (z_j - r_j) / s_p - (lse_p - lse_q)   (reverse_kl: z and r swapped),
//   BC = exp(lse((z + r) / 2) - (lse_p + lse_q) / 2),
// so a row is read once and takes one exp per entry fewer than pass 2 would. Hellinger's BC takes
// no exp of its own: sum_j sqrt(e^(z_j - m_p) e^(r_j - m_q)) / sqrt(s_p s_q) (lse_absorb_root), whose
// dropped terms (a product below float's smallest normal) change BC by under ~V 1e-19: a row whose
// BC is under kRootSumMinBc is reduced again the exact way, as bhattacharyya's always are (its
// -log BC needs BC's relative precision however small it is).
bool one_pass(DivKind kind) {
  return kind == DivKind::kKl || kind == DivKind::kReverseKl || kind == DivKind::kHellinger ||
         kind == DivKind::kBhattacharyya;
}

// Below this BC the terms hellinger's root sum drops (up to ~V 1e-19) could show in its gradient's
// p_j BC, so such a row takes the third log-sum-exp instead (rows almost without common mass).
constexpr double kRootSumMinBc = 1.0 / (1 << 20);

template <typename scalar_t, typename acc_t>
DivRow<acc_t> reduce_row_once(const scalar_t* z, const scalar_t* r, int64_t vocab, const DivParams<acc_t>& prm,
                              bool root_sum = true) {
  acc_t buf[3][kPairPiece], ones[kPairPiece];
  math::LseState<acc_t> st[3] = {math::lse_empty<acc_t>(), math::lse_empty<acc_t>(), math::lse_empty<acc_t>()};
  double weighted = 0.0;  // kl: the weighted log ratios; hellinger: BC's sum, in float64 lanes like pass 2's
  std::fill(ones, ones + kPairPiece, acc_t(1));
  const bool kl = prm.kind == DivKind::kKl, reverse = prm.kind == DivKind::kReverseKl;
  const bool hellinger = prm.kind == DivKind::kHellinger && root_sum;
  const int lead = reverse ? 1 : 0;  // the distribution whose probabilities weight the log ratios
  // float32 rows need no piece buffers for kl, reverse_kl and hellinger: the rows go to one primitive at once.
  const bool whole_row = std::is_same_v<scalar_t, float> && (kl || reverse || hellinger);
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (whole_row && hellinger) lse_absorb_root(st[0].max, st[0].sum, st[1].max, st[1].sum, weighted, z, r, vocab);
    if (whole_row && kl) lse_absorb_log_ratio(st[0].max, st[0].sum, weighted, st[1].max, st[1].sum, z, r, vocab);
    if (whole_row && reverse) lse_absorb_log_ratio(st[1].max, st[1].sum, weighted, st[0].max, st[0].sum, r, z, vocab);
  }
  for (int64_t start = 0; start < (whole_row ? 0 : vocab); start += kPairPiece) {
    const int64_t n = std::min(kPairPiece, vocab - start);
    for (int64_t i = 0; i < n; ++i) {
      const acc_t zi = static_cast<acc_t>(z[start + i]), ri = static_cast<acc_t>(r[start + i]);
      buf[0][i] = zi;
      buf[1][i] = ri;
      buf[2][i] = kl ? zi - ri : (reverse ? ri - zi : acc_t(0.5) * (zi + ri));
    }
    if (kl || reverse) {
      lse_absorb_weighted(st[lead].max, st[lead].sum, weighted, buf[lead], buf[2], n);
      lse_absorb(st[1 - lead].max, st[1 - lead].sum, buf[1 - lead], n);
    } else if (hellinger) {
      lse_absorb_root(st[0].max, st[0].sum, st[1].max, st[1].sum, weighted, buf[0], buf[1], n);
    } else {
      for (int k = 0; k < 2; ++k) lse_absorb(st[k].max, st[k].sum, buf[k], n);
      lse_absorb_weighted(st[2].max, st[2].sum, weighted, buf[2], ones, n);
    }
  }
  DivRow<acc_t> row{math::lse_finish(st[0]), math::lse_finish(st[1]), acc_t(0), acc_t(0)};
  if (kl || reverse) {
    const double lead_minus_other = kl ? double(row.lse_p) - double(row.lse_q) : double(row.lse_q) - double(row.lse_p);
    row.agg = static_cast<acc_t>(weighted / static_cast<double>(st[lead].sum) - lead_minus_other);
  } else if (hellinger) {
    const double bc = weighted / std::sqrt(double(st[0].sum) * double(st[1].sum));
    if (bc < kRootSumMinBc) return reduce_row_once(z, r, vocab, prm, /*root_sum=*/false);
    row.agg = static_cast<acc_t>(bc);
  } else {
    row.agg = static_cast<acc_t>(std::exp(double(st[2].max) - 0.5 * (double(row.lse_p) + double(row.lse_q))) * weighted);
  }
  return row;
}

// kl's and hellinger's gradient of a float32 row times g in one vectorised loop over the whole row,
// without piece buffers; false for everything else (the caller takes pieces).
template <typename scalar_t, typename acc_t>
bool whole_row_grad(DivKind kind, const scalar_t* z, const scalar_t* r, int64_t vocab, const DivRow<acc_t>& row,
                    acc_t g, scalar_t* out) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (kind == DivKind::kKl) {
      vec_kl_grad(z, r, vocab, row.lse_p, row.lse_q, row.agg, g, out);
      return true;
    }
    if (kind == DivKind::kHellinger) {
      vec_hellinger_grad(z, r, vocab, row.lse_p, row.lse_q, row.agg, g, out);
      return true;
    }
  }
  return false;
}

template <typename scalar_t, typename acc_t>
DivRow<acc_t> reduce_row(const scalar_t* z, const scalar_t* r, int64_t vocab, const DivParams<acc_t>& prm) {
  if (one_pass(prm.kind)) return reduce_row_once(z, r, vocab, prm);
  acc_t buf[2][kPairPiece];
  math::LseState<acc_t> st[2] = {math::lse_empty<acc_t>(), math::lse_empty<acc_t>()};
  for (int64_t start = 0; start < vocab; start += kPairPiece) {
    const int64_t n = std::min(kPairPiece, vocab - start);
    for (int64_t i = 0; i < n; ++i) {
      buf[0][i] = static_cast<acc_t>(z[start + i]);
      buf[1][i] = static_cast<acc_t>(r[start + i]);
    }
    for (int k = 0; k < 2; ++k) lse_absorb(st[k].max, st[k].sum, buf[k], n);
  }
  DivRow<acc_t> row{math::lse_finish(st[0]), math::lse_finish(st[1]), acc_t(0), acc_t(0)};
  reduce_sums(z, r, vocab, prm, row);
  return row;
}

DivForward forward(const DivInputs& in) {
  const int64_t rows = in.rows, vocab = in.vocab;
  const auto acc_opts = in.policy.options().dtype(acc_dtype(in.policy.scalar_type()));
  auto div = at::empty({rows}, acc_opts);
  auto stats = at::empty({rows, math::kDivRowStats}, acc_opts);
  if (rows == 0) return {div, stats};
  const bool* mask = in.mask.defined() ? in.mask.const_data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.policy.scalar_type(), "objx_vocab_divergence", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto prm = make_div_params<acc_t>(in);
    const scalar_t* z = in.policy.const_data_ptr<scalar_t>();
    const scalar_t* r = in.ref.const_data_ptr<scalar_t>();
    acc_t* div_p = div.mutable_data_ptr<acc_t>();
    acc_t* st = stats.mutable_data_ptr<acc_t>();
    at::parallel_for(0, rows, row_grain(vocab), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        acc_t* out = st + i * math::kDivRowStats;
        if (mask && !mask[i]) {
          div_p[i] = acc_t(0);
          std::fill(out, out + math::kDivRowStats, acc_t(0));
          continue;
        }
        const auto row = reduce_row(z + in.p_rows.offset(i), r + in.r_rows.offset(i), vocab, prm);
        div_p[i] = math::div_value(prm, row);
        out[0] = row.lse_p;
        out[1] = row.lse_q;
        out[2] = row.agg;
        out[3] = row.pa;
      }
    });
  });
  return {div, stats};
}

at::Tensor backward(const DivInputs& in, const at::Tensor& grad_div, const at::Tensor& stats) {
  const int64_t rows = in.rows, vocab = in.vocab;
  auto grad = at::empty(in.policy.sizes(), in.policy.options().memory_format(at::MemoryFormat::Contiguous));
  if (rows == 0) return grad;
  const bool* mask = in.mask.defined() ? in.mask.const_data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.policy.scalar_type(), "objx_vocab_divergence_bwd", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto prm = make_div_params<acc_t>(in);
    const scalar_t* z = in.policy.const_data_ptr<scalar_t>();
    const scalar_t* r = in.ref.const_data_ptr<scalar_t>();
    const acc_t* g = grad_div.const_data_ptr<acc_t>();
    const acc_t* st = stats.const_data_ptr<acc_t>();
    scalar_t* out_base = grad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(vocab), [&](int64_t begin, int64_t end) {
      PairPiece<acc_t> piece;
      acc_t grads[PairPiece<acc_t>::kSize];
      const Exps need = grad_exps(prm.kind);
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* out = out_base + i * vocab;
        if (mask && !mask[i]) {
          std::fill(out, out + vocab, scalar_t(0));
          continue;
        }
        const acc_t* s = st + i * math::kDivRowStats;
        const DivRow<acc_t> row{s[0], s[1], s[2], s[3]};
        if (whole_row_grad(prm.kind, z + in.p_rows.offset(i), r + in.r_rows.offset(i), vocab, row, g[i], out))
          continue;
        for (int64_t start = 0; start < vocab; start += PairPiece<acc_t>::kSize) {
          const int64_t n = std::min(PairPiece<acc_t>::kSize, vocab - start);
          load_piece(z + in.p_rows.offset(i), r + in.r_rows.offset(i), start, n, row, need, piece);
          piece_grad(prm, row, piece, n, grads);
          for (int64_t j = 0; j < n; ++j) out[start + j] = static_cast<scalar_t>(g[i] * grads[j]);
        }
      }
    });
  });
  return grad;
}

at::Tensor shard_sums(const DivInputs& in, const at::Tensor& row_lse) {
  const int64_t rows = in.rows, vocab = in.vocab;
  auto sums = at::empty({rows, 2}, row_lse.options());
  if (rows == 0) return sums;
  const bool* mask = in.mask.defined() ? in.mask.const_data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.policy.scalar_type(), "objx_div_shard_sums", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto prm = make_div_params<acc_t>(in);
    const scalar_t* z = in.policy.const_data_ptr<scalar_t>();
    const scalar_t* r = in.ref.const_data_ptr<scalar_t>();
    const acc_t* lse = row_lse.const_data_ptr<acc_t>();
    acc_t* out = sums.mutable_data_ptr<acc_t>();
    at::parallel_for(0, rows, row_grain(vocab), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        DivRow<acc_t> row{lse[2 * i], lse[2 * i + 1], acc_t(0), acc_t(0)};
        if (!mask || mask[i]) reduce_sums(z + in.p_rows.offset(i), r + in.r_rows.offset(i), vocab, prm, row);
        out[2 * i] = row.agg;
        out[2 * i + 1] = row.pa;
      }
    });
  });
  return sums;
}

}  // namespace

extern const DivKernels kCpuDivKernels{&forward, &backward, &shard_sums};

}  // namespace objx
