// CPU kernels of vocab_divergence (SPEC §3.4): rows in parallel; per row one pass for both
// log-sum-exps (vectorised), one for the divergence sums, and one in the backward for the gradient.
#include <algorithm>
#include <cmath>

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

// The logs of entries [start, start + n) of a row into a piece, then their exps.
template <typename scalar_t, typename acc_t>
void load_piece(const scalar_t* z, const scalar_t* r, int64_t start, int64_t n, const DivRow<acc_t>& row,
                PairPiece<acc_t>& piece) {
  for (int64_t i = 0; i < n; ++i) {
    piece.log_p[i] = static_cast<acc_t>(z[start + i]) - row.lse_p;
    piece.log_q[i] = static_cast<acc_t>(r[start + i]) - row.lse_q;
  }
  piece.take_exps(n);
}

// The pass-2 sums (agg, pa) of a row under row.lse_p, row.lse_q.
template <typename scalar_t, typename acc_t>
void reduce_sums(const scalar_t* z, const scalar_t* r, int64_t vocab, const DivParams<acc_t>& prm, DivRow<acc_t>& row) {
  PairPiece<acc_t> piece;
  acc_t aggs[PairPiece<acc_t>::kSize], pas[PairPiece<acc_t>::kSize];
  double agg = 0.0, pa = 0.0;
  for (int64_t start = 0; start < vocab; start += PairPiece<acc_t>::kSize) {
    const int64_t n = std::min(PairPiece<acc_t>::kSize, vocab - start);
    load_piece(z, r, start, n, row, piece);
    for (int64_t i = 0; i < n; ++i) math::div_terms(prm, piece[i], aggs[i], pas[i]);
    agg += piece_sum(aggs, n);
    pa += piece_sum(pas, n);
  }
  row.agg = static_cast<acc_t>(agg);
  row.pa = static_cast<acc_t>(pa);
}

template <typename scalar_t, typename acc_t>
DivRow<acc_t> reduce_row(const scalar_t* z, const scalar_t* r, int64_t vocab, const DivParams<acc_t>& prm) {
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
  const int64_t rows = in.policy.size(0), vocab = in.policy.size(1);
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
    const int64_t zs = in.policy.stride(0), rs = in.ref.stride(0);
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
        const auto row = reduce_row(z + i * zs, r + i * rs, vocab, prm);
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
  const int64_t rows = in.policy.size(0), vocab = in.policy.size(1);
  auto grad = at::empty(in.policy.sizes(), in.policy.options().memory_format(at::MemoryFormat::Contiguous));
  if (rows == 0) return grad;
  const bool* mask = in.mask.defined() ? in.mask.const_data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.policy.scalar_type(), "objx_vocab_divergence_bwd", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto prm = make_div_params<acc_t>(in);
    const scalar_t* z = in.policy.const_data_ptr<scalar_t>();
    const scalar_t* r = in.ref.const_data_ptr<scalar_t>();
    const int64_t zs = in.policy.stride(0), rs = in.ref.stride(0);
    const acc_t* g = grad_div.const_data_ptr<acc_t>();
    const acc_t* st = stats.const_data_ptr<acc_t>();
    scalar_t* out_base = grad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(vocab), [&](int64_t begin, int64_t end) {
      PairPiece<acc_t> piece;
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* out = out_base + i * vocab;
        if (mask && !mask[i]) {
          std::fill(out, out + vocab, scalar_t(0));
          continue;
        }
        const acc_t* s = st + i * math::kDivRowStats;
        const DivRow<acc_t> row{s[0], s[1], s[2], s[3]};
        for (int64_t start = 0; start < vocab; start += PairPiece<acc_t>::kSize) {
          const int64_t n = std::min(PairPiece<acc_t>::kSize, vocab - start);
          load_piece(z + i * zs, r + i * rs, start, n, row, piece);
          for (int64_t j = 0; j < n; ++j)
            out[start + j] = static_cast<scalar_t>(g[i] * math::div_grad(prm, row, piece[j]));
        }
      }
    });
  });
  return grad;
}

at::Tensor shard_sums(const DivInputs& in, const at::Tensor& row_lse) {
  const int64_t rows = in.policy.size(0), vocab = in.policy.size(1);
  auto sums = at::empty({rows, 2}, row_lse.options());
  if (rows == 0) return sums;
  const bool* mask = in.mask.defined() ? in.mask.const_data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.policy.scalar_type(), "objx_div_shard_sums", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto prm = make_div_params<acc_t>(in);
    const scalar_t* z = in.policy.const_data_ptr<scalar_t>();
    const scalar_t* r = in.ref.const_data_ptr<scalar_t>();
    const int64_t zs = in.policy.stride(0), rs = in.ref.stride(0);
    const acc_t* lse = row_lse.const_data_ptr<acc_t>();
    acc_t* out = sums.mutable_data_ptr<acc_t>();
    at::parallel_for(0, rows, row_grain(vocab), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        DivRow<acc_t> row{lse[2 * i], lse[2 * i + 1], acc_t(0), acc_t(0)};
        if (!mask || mask[i]) reduce_sums(z + i * zs, r + i * rs, vocab, prm, row);
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
