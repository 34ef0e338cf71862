// CPU kernel of row_logsumexp: rows in parallel, each folded piece by piece into an online
// log-sum-exp (vectorised for float32).
#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "common/acc_type.h"
#include "common/row_layout.h"
#include "common/vec_row.h"
#include "math/online_lse.h"
#include "row_lse/row_lse.h"

namespace objx {
namespace {

at::Tensor logsumexp(const at::Tensor& x, double temperature) {
  const int64_t rows = row_count(x), vocab = vocab_size(x);
  auto out = at::empty({rows}, x.options().dtype(acc_dtype(x.scalar_type())));
  if (rows == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "objx_row_logsumexp", [&] {
    using acc_t = acc_type<scalar_t>;
    constexpr int64_t kPiece = 1024;
    const scalar_t* base = x.const_data_ptr<scalar_t>();
    const RowLayout layout = row_layout(x);
    const acc_t temp = static_cast<acc_t>(temperature);
    acc_t* out_p = out.mutable_data_ptr<acc_t>();
    at::parallel_for(0, rows, row_grain(vocab), [&](int64_t begin, int64_t end) {
      acc_t buf[kPiece];
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = base + layout.offset(r);
        math::LseState<acc_t> st = math::lse_empty<acc_t>();
        for (int64_t start = 0; start < vocab; start += kPiece) {
          const int64_t n = std::min(kPiece, vocab - start);
          // x / T, divided as the distill kernels divide (their log-sum-exps must match to the bit)
          for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc_t>(row[start + i]) / temp;
          lse_absorb(st.max, st.sum, buf, n);
        }
        out_p[r] = math::lse_finish(st);
      }
    });
  });
  return out;
}

}  // namespace

extern const RowLseKernels kCpuRowLseKernels{&logsumexp};

}  // namespace objx
