// CPU fused linear log-prob / policy-loss ops.
//
// Per chunk of c tokens:
//   1. Z = H_c W^T (+ b): one GEMM (ATen -> MKL/oneDNN) into a (c, V) block reused across
//      chunks, in the input dtype (fp32 accumulation inside BLAS), like ops/torch_chunked.py.
//   2. ONE parallel loop over the rows of Z (at::parallel_for): each row is pulled into L2
//      once and all per-token work happens there - max, sum of exponentials, entropy term,
//      target gather, the per-token policy loss and its derivative g = dloss/dlogp, then the
//      softmax gradient dz = g * (onehot - p) / T written in place over the row.
//   3. dH_c = dZ W and dW += dZ^T H_c: two GEMMs.
// The chunked PyTorch backend does the same maths with ~6 full sweeps over the (c, V) block
// (amax, sub, gather, exp, sum, mul, ...), each one a trip to DRAM for a 64 MiB block; here
// the block leaves the cache once per sweep of step 2.
//
// Dtypes: fp32 works in place in the block. For bf16/fp16 the GEMM writes the block in the
// input dtype (as the PyTorch backend, whose `.float()` sees the same rounded logits); each
// row is widened into a per-thread fp32 row buffer, and the gradient is narrowed back into
// the block for the two gradient GEMMs. dW is accumulated in fp32 across chunks for half
// inputs (summing many bf16 partial products would round at every chunk).
//
// Statistics and the loss are reduced in double, in token order (deterministic for any
// number of threads).

#include "cpu/fused_ops.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/row_kernels.h"

namespace rgpo_fast {
namespace cpu {

namespace {

constexpr int64_t kBlockElements = int64_t(1) << 24;  // 16M elements = 64 MiB of fp32

// Rows per parallel task: a whole row is already 10^5 elements for real vocabularies;
// for small ones group rows so a task has at least ~32K elements.
int64_t row_grain(int64_t vocab) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(vocab, 1)); }

int64_t resolve_chunk(int64_t chunk_size, int64_t n, int64_t v) {
  const int64_t c = chunk_size > 0 ? chunk_size : auto_chunk_size(n, v);
  return std::max<int64_t>(1, std::min(c, n));
}

// Z_c = H_c W^T (+ b) into `out` (c, V), input dtype. For half dtypes the bias is not added
// here but in fp32 when a row is widened (see load_row): one rounding of the logits instead
// of two (product rounded to bf16, then the sum rounded again).
void logits_block(const Tensor& h, const Tensor& weight, const OptTensor& bias, Tensor& out) {
  if (bias.has_value() && out.scalar_type() == at::kFloat) {
    at::addmm_out(out, *bias, h, weight.t());
  } else {
    at::mm_out(out, h, weight.t());
  }
}

// A row of the block as fp32: the row itself for fp32, else widened into `scratch` with
// the fp32 bias `bias_f` (may be null) added.
template <typename T>
float* load_row(T* row, float* scratch, int64_t v, const float* bias_f) {
  if constexpr (std::is_same_v<T, float>) {
    return row;
  } else {
    if (bias_f != nullptr) {
      for (int64_t k = 0; k < v; ++k) scratch[k] = static_cast<float>(row[k]) + bias_f[k];
    } else {
      for (int64_t k = 0; k < v; ++k) scratch[k] = static_cast<float>(row[k]);
    }
    return scratch;
  }
}

// fp32 copy of the bias for half dtypes (added at widening), else empty.
Tensor half_bias(const OptTensor& bias) {
  if (!bias.has_value() || bias->scalar_type() == at::kFloat) return Tensor();
  return bias->to(at::kFloat).contiguous();
}

// Write an fp32 row back into the block (narrowing for half dtypes; nothing for fp32).
template <typename T>
void store_row(T* row, const float* x, int64_t v) {
  if constexpr (!std::is_same_v<T, float>) {
    for (int64_t k = 0; k < v; ++k) row[k] = static_cast<T>(x[k]);
  }
}

// Per-thread fp32 row buffers (half dtypes only) and bias-gradient accumulators.
struct ThreadBuffers {
  Tensor rows;     // (threads, V) fp32 or empty
  Tensor db_acc;   // (threads, V) fp32 or empty
  float* row(int tid, int64_t v) { return rows.defined() ? rows.data_ptr<float>() + tid * v : nullptr; }
  float* db(int tid, int64_t v) { return db_acc.defined() ? db_acc.data_ptr<float>() + tid * v : nullptr; }
};

ThreadBuffers make_thread_buffers(bool half, bool need_bias, int64_t v) {
  ThreadBuffers b;
  const int64_t threads = at::get_num_threads();
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  if (half) b.rows = at::empty({threads, v}, f32);
  if (need_bias) b.db_acc = at::zeros({threads, v}, f32);
  return b;
}

// dH_c = dZ W, dW += dZ^T H_c (dZ in the input dtype, dW fp32 for half inputs).
void gradient_gemms(const Tensor& dz, const Tensor& h, const Tensor& weight, Tensor& dh,
                    Tensor& dw, int64_t s) {
  if (dh.defined()) {
    Tensor dh_c = dh.narrow(0, s, dz.size(0));
    at::mm_out(dh_c, dz, weight);
  }
  if (dw.defined()) {
    if (dw.scalar_type() == dz.scalar_type()) {
      dw.addmm_(dz.t(), h);
    } else {
      dw.add_(at::mm(dz.t(), h));
    }
  }
}

std::tuple<Tensor, Tensor, Tensor> grad_buffers(const Tensor& hidden, const Tensor& weight,
                                                bool need_h, bool need_w) {
  Tensor dh, dw;
  if (need_h) dh = at::empty_like(hidden);
  if (need_w) {
    const bool half = weight.scalar_type() != at::kFloat;
    dw = at::zeros(weight.sizes(), weight.options().dtype(half ? at::kFloat : weight.scalar_type()));
  }
  return {dh, dw, Tensor()};
}

// Final dtypes; absent gradients become (0,) tensors (an op schema cannot return None).
std::tuple<Tensor, Tensor, Tensor> finish_grads(Tensor dh, Tensor dw, ThreadBuffers& tb,
                                                const Tensor& hidden, const Tensor& weight,
                                                const OptTensor& bias, bool need_b) {
  auto empty = [&](const Tensor& like) { return at::empty({0}, like.options()); };
  if (!dh.defined()) dh = empty(hidden);
  if (!dw.defined()) {
    dw = empty(weight);
  } else if (dw.scalar_type() != weight.scalar_type()) {
    dw = dw.to(weight.scalar_type());
  }
  Tensor db;
  if (need_b && bias.has_value()) {
    db = tb.db_acc.sum(0).to(bias->scalar_type());
  } else {
    db = empty(bias.has_value() ? *bias : weight);
  }
  return {dh, dw, db};
}

// The loop every op here shares. For each chunk of at most c tokens: Z = H_c W^T (+ b)
// into one reused (c, V) block, then row_fn(i, r, x, db) for each row r (token i = s + r)
// in parallel, with x the row as fp32 (the row itself for fp32, else a per-thread widened
// copy with the bias added) and db this thread's bias-gradient accumulator (or null); when
// `write_back`, x is narrowed back into the block afterwards (the gradient GEMMs read it).
// Last, chunk_fn(s, rows, z, h) on the calling thread (per-chunk reductions and GEMMs).
template <typename RowFn, typename ChunkFn>
void for_each_logits_row(const Tensor& hidden, const Tensor& weight, const OptTensor& bias,
                         int64_t c, ThreadBuffers& tb, bool write_back, const RowFn& row_fn,
                         const ChunkFn& chunk_fn) {
  const int64_t n = hidden.size(0), v = weight.size(0);
  const Tensor bias_half = half_bias(bias);
  const float* bias_f = bias_half.defined() ? bias_half.data_ptr<float>() : nullptr;
  Tensor block = at::empty({c, v}, hidden.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, hidden.scalar_type(), "rgpo_fast_rows", [&] {
    for (int64_t s = 0; s < n; s += c) {
      const int64_t rows = std::min(c, n - s);
      Tensor z = block.narrow(0, 0, rows);
      Tensor h = hidden.narrow(0, s, rows);
      logits_block(h, weight, bias, z);
      scalar_t* zp = z.data_ptr<scalar_t>();
      at::parallel_for(0, rows, row_grain(v), [&](int64_t r0, int64_t r1) {
        const int tid = at::get_thread_num();
        float* scratch = tb.row(tid, v);
        float* db = tb.db(tid, v);
        for (int64_t r = r0; r < r1; ++r) {
          float* x = load_row<scalar_t>(zp + r * v, scratch, v, bias_f);
          row_fn(s + r, r, x, db);
          if (write_back) store_row<scalar_t>(zp + r * v, x, v);
        }
      });
      chunk_fn(s, rows, z, h);
    }
  });
}

struct TokenPtrs {
  const float* adv;
  const float* pg_w;
  const float* sft_w;
  const bool* policy;
  const bool* off;
  const float* old;
  const float* ref;
  const float* rollout;

  explicit TokenPtrs(const TokenTensors& t)
      : adv(t.advantages.data_ptr<float>()),
        pg_w(t.pg_weight.data_ptr<float>()),
        sft_w(t.sft_weight.data_ptr<float>()),
        policy(t.policy.data_ptr<bool>()),
        off(t.offpolicy ? t.offpolicy->data_ptr<bool>() : nullptr),
        old(t.old_logprobs ? t.old_logprobs->data_ptr<float>() : nullptr),
        ref(t.ref_logprobs ? t.ref_logprobs->data_ptr<float>() : nullptr),
        rollout(t.rollout_logprobs ? t.rollout_logprobs->data_ptr<float>() : nullptr) {}

  TokenIn at(int64_t i, float logp, float ent) const {
    TokenIn t;
    t.logp = logp;
    t.adv = adv[i];
    t.pg_weight = pg_w[i];
    t.sft_weight = sft_w[i];
    t.policy = policy[i];
    t.offpolicy = off != nullptr && off[i];
    t.old_logp = old != nullptr ? old[i] : 0.0f;
    t.ref_logp = ref != nullptr ? ref[i] : 0.0f;
    t.rollout_logp = rollout != nullptr ? rollout[i] : 0.0f;
    t.entropy = ent;
    return t;
  }
};

// Sum per-token stats (rows x kNumStats, fp32) into double accumulators, in token order.
void reduce_stats(const std::vector<float>& row_stats, const std::vector<float>& row_loss,
                  int64_t rows, std::array<double, kNumStats>& stats, double& loss) {
  for (int64_t r = 0; r < rows; ++r) {
    loss += row_loss[r];
    for (int j = 0; j < kNumStats; ++j) stats[j] += row_stats[r * kNumStats + j];
  }
}

Tensor stats_tensor(const std::array<double, kNumStats>& stats) {
  Tensor out = at::empty({kNumStats}, at::TensorOptions().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  for (int j = 0; j < kNumStats; ++j) o[j] = static_cast<float>(stats[j]);
  return out;
}

}  // namespace

int64_t auto_chunk_size(int64_t n_tokens, int64_t vocab) {
  const int64_t rows = std::max<int64_t>(16, kBlockElements / std::max<int64_t>(vocab, 1));
  return std::max<int64_t>(1, std::min(n_tokens, rows));
}

// A truncated sampler's dropped logits sit this far below the row's kept ones, in units of
// logit / T (see row_drop_below).
constexpr float kDropped = 1.0e4f;

std::tuple<Tensor, Tensor, Tensor> logprob_forward(const Tensor& hidden, const Tensor& weight,
                                                   const OptTensor& bias, const Tensor& targets,
                                                   double temperature, bool with_entropy,
                                                   int64_t chunk_size,
                                                   const OptTensor& threshold) {
  const int64_t n = hidden.size(0), v = weight.size(0);
  auto f32 = hidden.options().dtype(at::kFloat);
  Tensor logp = at::empty({n}, f32), lse = at::empty({n}, f32);
  Tensor ent = at::empty({with_entropy ? n : 0}, f32);
  if (n == 0) return {logp, lse, ent};
  const int64_t c = resolve_chunk(chunk_size, n, v);
  const float inv_t = static_cast<float>(1.0 / temperature);
  ThreadBuffers tb = make_thread_buffers(hidden.scalar_type() != at::kFloat, false, v);
  const int64_t* tgt = targets.data_ptr<int64_t>();
  float* lp = logp.data_ptr<float>();
  float* ls = lse.data_ptr<float>();
  float* en = with_entropy ? ent.data_ptr<float>() : nullptr;
  const float* thr = threshold.has_value() ? threshold->data_ptr<float>() : nullptr;
  for_each_logits_row(
      hidden, weight, bias, c, tb, /*write_back=*/false,
      [&](int64_t i, int64_t, float* x, float*) {
        const float m = row_max(x, v);  // the top logit is never dropped
        if (thr != nullptr) {
          row_drop_below(x, v, inv_t, thr[i], tgt[i], m - kDropped / inv_t);
        }
        double se = 0.0, sey = 0.0;
        row_exp_sums(x, nullptr, v, m, inv_t, &se, en != nullptr ? &sey : nullptr);
        const double log_se = std::log(se);
        lp[i] = static_cast<float>((x[tgt[i]] - m) * inv_t - log_se);
        ls[i] = static_cast<float>(m * inv_t + log_se);
        // H = -sum_k p_k log p_k = log S - sum_k e_k y_k / S, y_k = (x_k - m) / T.
        if (en != nullptr) en[i] = static_cast<float>(log_se - sey / se);
      },
      [](int64_t, int64_t, const Tensor&, const Tensor&) {});
  return {logp, lse, ent};
}

std::tuple<Tensor, Tensor, Tensor> logprob_backward(
    const Tensor& hidden, const Tensor& weight, const OptTensor& bias, const Tensor& targets,
    const Tensor& lse, const OptTensor& entropy, double temperature, const Tensor& g_logp,
    const OptTensor& g_ent, bool need_hidden, bool need_weight, bool need_bias,
    int64_t chunk_size, const OptTensor& threshold) {
  const int64_t n = hidden.size(0), v = weight.size(0);
  need_bias = need_bias && bias.has_value();
  Tensor dh, dw, unused;
  std::tie(dh, dw, unused) = grad_buffers(hidden, weight, need_hidden, need_weight);
  ThreadBuffers tb = make_thread_buffers(hidden.scalar_type() != at::kFloat, need_bias, v);
  if (n > 0 && (need_hidden || need_weight || need_bias)) {
    const int64_t c = resolve_chunk(chunk_size, n, v);
    const float inv_t = static_cast<float>(1.0 / temperature);
    const int64_t* tgt = targets.data_ptr<int64_t>();
    const float* ls = lse.data_ptr<float>();
    const float* gl = g_logp.data_ptr<float>();
    const float* gh = g_ent.has_value() ? g_ent->data_ptr<float>() : nullptr;
    const float* en = gh != nullptr ? entropy->data_ptr<float>() : nullptr;
    const float* thr = threshold.has_value() ? threshold->data_ptr<float>() : nullptr;
    for_each_logits_row(
        hidden, weight, bias, c, tb, /*write_back=*/true,
        [&](int64_t i, int64_t, float* x, float* db) {
          // One pass: logits -> -p_k (g_l + g_h (log p_k + H)) / T, then + g_l / T at
          // the target (d logp_t / dz_k = 1[k = t] - p_k; dH/dz_k = -p_k (log p_k + H)).
          const float g_h = gh != nullptr ? gh[i] : 0.0f, h = en != nullptr ? en[i] : 0.0f;
          if (thr == nullptr) {
            row_logprob_grad(x, v, inv_t, ls[i], gl[i], g_h, h);
          } else {  // a truncated sampler's dropped logits: p_k = 0, no gradient
            const float lp_t = x[tgt[i]] * inv_t - ls[i];  // the target is always kept
            row_logprob_grad_cut(x, v, inv_t, ls[i], gl[i], g_h, h, thr[i]);
            x[tgt[i]] = -fast_expf(lp_t) * (gl[i] + g_h * (lp_t + h)) * inv_t;
          }
          x[tgt[i]] += gl[i] * inv_t;
          if (db != nullptr) row_accumulate(db, x, v);
        },
        [&](int64_t s, int64_t, const Tensor& z, const Tensor& h) {
          gradient_gemms(z, h, weight, dh, dw, s);
        });
  }
  return finish_grads(dh, dw, tb, hidden, weight, bias, need_bias);
}

std::tuple<Tensor, Tensor, Tensor> token_loss(const Tensor& logp, const TokenTensors& terms,
                                              const OptTensor& entropy, const LossParams& p) {
  const int64_t n = logp.size(0);
  auto f32 = logp.options().dtype(at::kFloat);
  Tensor loss = at::empty({n}, f32), grad = at::empty({n}, f32);
  const float* lp = logp.data_ptr<float>();
  const float* en = entropy.has_value() ? entropy->data_ptr<float>() : nullptr;
  float* lo = loss.data_ptr<float>();
  float* go = grad.data_ptr<float>();
  TokenPtrs tp(terms);
  std::vector<float> row_stats(static_cast<size_t>(n) * kNumStats);
  at::parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      TokenOut o;
      token_loss_and_grad(p, tp.at(i, lp[i], en != nullptr ? en[i] : 0.0f), o);
      lo[i] = o.loss;
      go[i] = o.grad;
      std::copy(o.stats, o.stats + kNumStats, row_stats.begin() + i * kNumStats);
    }
  });
  std::array<double, kNumStats> stats{};
  double unused = 0.0;
  reduce_stats(row_stats, std::vector<float>(n, 0.0f), n, stats, unused);
  return {loss, grad, stats_tensor(stats)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> policy_loss_forward_backward(
    const Tensor& hidden, const Tensor& weight, const OptTensor& bias, const Tensor& targets,
    const TokenTensors& terms, const LossParams& p, double temperature, bool with_entropy,
    bool need_hidden, bool need_weight, bool need_bias, int64_t chunk_size) {
  const int64_t n = hidden.size(0), v = weight.size(0);
  need_bias = need_bias && bias.has_value();
  const bool grad = need_hidden || need_weight || need_bias;
  Tensor dh, dw, unused;
  std::tie(dh, dw, unused) = grad_buffers(hidden, weight, need_hidden, need_weight);
  ThreadBuffers tb = make_thread_buffers(hidden.scalar_type() != at::kFloat, need_bias, v);
  std::array<double, kNumStats> stats{};
  double loss = 0.0;
  if (n > 0) {
    const int64_t c = resolve_chunk(chunk_size, n, v);
    const float inv_t = static_cast<float>(1.0 / temperature);
    const int64_t* tgt = targets.data_ptr<int64_t>();
    TokenPtrs tp(terms);
    std::vector<float> row_stats(static_cast<size_t>(c) * kNumStats), row_loss(c);
    for_each_logits_row(
        hidden, weight, bias, c, tb, /*write_back=*/grad,
        [&](int64_t i, int64_t r, float* x, float* db) {
          const float m = row_max(x, v);
          const float x_t = x[tgt[i]];  // read before the row is overwritten by exp
          double se = 0.0, sey = 0.0;
          // With gradients, keep e_k = exp((x_k - m) / T) in the row: the gradient pass
          // then only scales it (no second exp).
          row_exp_sums(x, grad ? x : nullptr, v, m, inv_t, &se, with_entropy ? &sey : nullptr);
          const double log_se = std::log(se);
          const float logp = static_cast<float>((x_t - m) * inv_t - log_se);
          const float ent = with_entropy ? static_cast<float>(log_se - sey / se) : 0.0f;
          TokenOut o;
          token_loss_and_grad(p, tp.at(i, logp, ent), o);
          row_loss[r] = o.loss;
          std::copy(o.stats, o.stats + kNumStats, row_stats.begin() + r * kNumStats);
          if (grad) {
            // dz_k = g (1[k = t] - e_k / S) / T, the 1/T from z = logits / T.
            row_scale(x, v, static_cast<float>(-o.grad / se) * inv_t);
            x[tgt[i]] += o.grad * inv_t;
            if (db != nullptr) row_accumulate(db, x, v);
          }
        },
        [&](int64_t s, int64_t rows, const Tensor& z, const Tensor& h) {
          reduce_stats(row_stats, row_loss, rows, stats, loss);
          if (grad) gradient_gemms(z, h, weight, dh, dw, s);
        });
  }
  auto [dh_out, dw_out, db_out] = finish_grads(dh, dw, tb, hidden, weight, bias, need_bias);
  Tensor loss_t = at::empty({}, hidden.options().dtype(at::kFloat));
  loss_t.fill_(loss);
  return {loss_t, stats_tensor(stats), dh_out, dw_out, db_out};
}

Tensor pack_bf16(at::TensorList tensors, at::IntArrayRef offsets, int64_t total) {
  Tensor out = at::zeros({total}, at::TensorOptions().dtype(at::kBFloat16));  // zero padding
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    out.narrow(0, offsets[i], t.numel()).copy_(t.reshape({-1}));
  }
  return out;
}

}  // namespace cpu
}  // namespace rgpo_fast
