// One step of word2vec's negative-sampling update (contrastive_jax/word2vec/
// sgns.py) as a single XLA:CPU FFI call, in place on the two donated tables.
// Compiled on first use by contrastive_jax/kernels/sgns_update.py, which says
// why it exists and when it is used.
//
// It computes what sgns.py's XLA update computes, up to float rounding: every
// example's gradient at the tables as they were before the step, summed into
// the tables, a row hit n > cap times in the step moving by cap / n of each of
// its updates. An example p has context rows ctx[p, :] with 0/1 weights
// m[p, :] (skip-gram: one row), u = sum_c m_c w_in[ctx_c] / max(sum_c m_c, 1),
// output rows t[p, 0] = out[p] and t[p, k] = the noise word drawn from
// uniform[p, k - 1] (the first index with cum[index] > uniform, as
// jnp.searchsorted(cum, uniform, side='right'), clipped to V - 1), weights a[p, 0] = mask[p] and
// a[p, k] = mask[p] [t[p, k] != out[p]], logits x_k = u . w_out[t_k], and
// coefficients g_k = a_k (sigmoid(x_k) - [k == 0]) (the loss's derivative in
// x_k). Then
//   w_out[t_k]  -= lr s_out(t_k) g_k u              for every (p, k),
//   w_in[ctx_c] -= lr s_in(ctx_c) m_c sum_k g_k w_out[t_k]   for every (p, c)
// (CBOW's update of the context words undivided by their count, as gensim's
// cbow_mean=1), s(r) = min(1, cap / max(count(r), 1)) with count(r) the summed
// weights of the entries hitting row r (cap <= 0: s = 1).
//
// Three passes, so every gradient reads the old tables: (1) per example, in
// parallel: the noise words, u, the coefficients, the input gradient and the
// loss, into scratch; (2) the output table's updates; (3) the input table's.
// Passes 2 and 3 split the rows among the threads (by a hash of the row) and
// each thread applies its rows' updates in example order, so the
// result is the same bits for any thread count and from run to run.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"
#ifdef _OPENMP
#include <omp.h>
#endif

namespace ffi = xla::ffi;

namespace {

inline float Dot(const float* __restrict a, const float* __restrict b, int64_t d) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < d; ++i) s += a[i] * b[i];
  return s;
}

// log1p(e) for e in [0, 1] as 2 atanh(s), s = e / (2 + e) in [0, 1/3], by its
// series to s^13: within 2.2e-7 relative of the exact value (glibc's log1pf:
// 1.9e-7), and a few multiply-adds instead of a library call.
inline float Log1pUnit(float e) {
  const float s = e / (2.f + e), s2 = s * s;
  float poly = 1.f / 13;
  poly = poly * s2 + 1.f / 11;
  poly = poly * s2 + 1.f / 9;
  poly = poly * s2 + 1.f / 7;
  poly = poly * s2 + 1.f / 5;
  poly = poly * s2 + 1.f / 3;
  poly = poly * s2 + 1.f;
  return 2.f * s * poly;
}

// The first i with cum[i] > u (V if none): a binary search narrowed by
// `index` (index[j] = #{i: cum[i] <= j / M}, M + 1 entries) to the buckets
// around u * M, so it usually looks at one or two entries. u in
// [(b - 1) / M, (b + 2) / M) for b = (int)(u * M) whatever the rounding, so
// the answer lies in [index[b - 1], index[b + 2]] and the result equals the
// full search's.
inline int64_t Draw(const float* cum, const int32_t* index, int64_t M, float u) {
  const int64_t b = std::min<int64_t>(std::max<int64_t>(int64_t(u * float(M)), 0), M - 1);
  const float* lo = cum + index[std::max<int64_t>(b - 1, 0)];
  const float* hi = cum + index[std::min<int64_t>(b + 2, M)];
  return std::upper_bound(lo, hi, u) - cum;
}

// The thread (of `team`) that applies row r's updates: a multiplicative hash
// scaled to [0, team), so no integer division per entry.
inline int Owner(int32_t r, int team) {
  return int((uint64_t(uint32_t(r) * 2654435761u) * uint64_t(team)) >> 32);
}

// Asks for the cache lines of a row of d floats ahead of its use: the rows
// are random, so the hardware prefetcher cannot guess them, and a step
// otherwise waits on each row's first miss in turn.
inline void PrefetchRow(const float* row, int64_t d) {
  for (int64_t i = 0; i < d; i += 16) __builtin_prefetch(row + i);
}

inline void Axpy(float alpha, const float* __restrict x, float* __restrict y, int64_t d) {
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) y[i] += alpha * x[i];
}

// Uninitialised float / int scratch that grows and is kept by the calling
// thread (one call at a time per thread; the OpenMP team only uses pointers).
template <typename T>
T* Scratch(std::vector<std::unique_ptr<T[]>>& store, std::vector<size_t>& sizes, int slot,
           size_t n) {
  if (int(store.size()) <= slot) {
    store.resize(slot + 1);
    sizes.resize(slot + 1, 0);
  }
  if (sizes[slot] < n) {
    store[slot].reset(new T[n]);
    sizes[slot] = n;
  }
  return store[slot].get();
}

ffi::Error SgnsUpdate(ffi::Buffer<ffi::F32> w_in, ffi::Buffer<ffi::F32> w_out,
                      ffi::Buffer<ffi::S32> ctx, ffi::Buffer<ffi::F32> ctx_mask,
                      ffi::Buffer<ffi::S32> out, ffi::Buffer<ffi::F32> mask,
                      ffi::Buffer<ffi::F32> uniform, ffi::Buffer<ffi::F32> cum,
                      ffi::Buffer<ffi::S32> cum_index, ffi::Buffer<ffi::F32> lr_buf, ffi::ResultBuffer<ffi::F32> new_in,
                      ffi::ResultBuffer<ffi::F32> new_out, ffi::ResultBuffer<ffi::F32> loss_out,
                      float cap, int64_t threads) {
  const auto tdims = w_in.dimensions();
  if (tdims.size() != 2 || w_out.dimensions().size() != 2 ||
      w_out.dimensions()[0] != tdims[0] || w_out.dimensions()[1] != tdims[1]) {
    return ffi::Error::InvalidArgument("SgnsUpdate: w_in and w_out must be [V, D] alike");
  }
  const int64_t V = tdims[0], D = tdims[1];
  const int64_t P = ctx.dimensions()[0], C = ctx.dimensions()[1];
  const int64_t K = uniform.dimensions()[1], K1 = K + 1;
  if (out.element_count() != size_t(P) || mask.element_count() != size_t(P) ||
      uniform.dimensions()[0] != P || ctx_mask.element_count() != size_t(P * C) ||
      cum.element_count() != size_t(V)) {
    return ffi::Error::InvalidArgument(
        "SgnsUpdate: ctx, ctx_mask [P, C]; out, mask [P]; uniform [P, K]; cum [V]");
  }
  const int32_t* cx = ctx.typed_data();
  const float* cm = ctx_mask.typed_data();
  const int32_t* ob = out.typed_data();
  const float* mk = mask.typed_data();
  const float* un = uniform.typed_data();
  const float* cu = cum.typed_data();
  const int32_t* ci = cum_index.typed_data();
  const int64_t M = int64_t(cum_index.element_count()) - 1;
  if (M < 1 || ci[0] < 0 || ci[M] > V) {
    return ffi::Error::InvalidArgument("SgnsUpdate: cum_index must be noise_index(cum)");
  }
  for (int64_t i = 0; i < P * C; ++i)
    if (cx[i] < 0 || cx[i] >= V) return ffi::Error::InvalidArgument("SgnsUpdate: context id out of range");
  for (int64_t i = 0; i < P; ++i)
    if (ob[i] < 0 || ob[i] >= V) return ffi::Error::InvalidArgument("SgnsUpdate: output id out of range");

  // The results alias the inputs (input_output_aliases); copy if XLA did not.
  float* win = new_in->typed_data();
  float* wout = new_out->typed_data();
  if (win != w_in.typed_data()) std::copy_n(w_in.typed_data(), V * D, win);
  if (wout != w_out.typed_data()) std::copy_n(w_out.typed_data(), V * D, wout);
  const float lr = lr_buf.typed_data()[0];
  const int T = int(std::max<int64_t>(threads, 1));
  // Skip-gram: u is the context row itself, read in place (w_in changes only
  // in pass 3); CBOW: the weighted mean, in scratch.
  const bool one_row = C == 1;

  static thread_local std::vector<std::unique_ptr<float[]>> fstore;
  static thread_local std::vector<std::unique_ptr<int32_t[]>> istore;
  static thread_local std::vector<size_t> fsizes, isizes;
  float* U = one_row ? nullptr : Scratch(fstore, fsizes, 0, size_t(P * D));
  float* G = Scratch(fstore, fsizes, 1, size_t(P * D));
  float* coef = Scratch(fstore, fsizes, 2, size_t(P * K1));
  float* wt = Scratch(fstore, fsizes, 3, size_t(P * K1));
  float* loss = Scratch(fstore, fsizes, 4, size_t(P));
  int32_t* tg = Scratch(istore, isizes, 0, size_t(P * K1));

  // Pass 1: per example, everything that reads the old tables.
#pragma omp parallel for num_threads(T) schedule(static)
  for (int64_t p = 0; p < P; ++p) {
    if (p + 1 < P) {
      PrefetchRow(&win[int64_t(cx[(p + 1) * C]) * D], D);
      PrefetchRow(&wout[int64_t(ob[p + 1]) * D], D);
    }
    const float* u;
    if (one_row) {
      u = &win[int64_t(cx[p]) * D];
    } else {
      float* acc = &U[p * D];
      std::fill(acc, acc + D, 0.f);
      float msum = 0.f;
      for (int64_t c = 0; c < C; ++c) {
        const float m = cm[p * C + c];
        msum += m;
        if (m != 0.f) Axpy(m, &win[int64_t(cx[p * C + c]) * D], acc, D);
      }
      const float inv = 1.f / std::max(msum, 1.f);
      for (int64_t i = 0; i < D; ++i) acc[i] *= inv;
      u = acc;
    }
    float* g = &G[p * D];
    std::fill(g, g + D, 0.f);
    tg[p * K1] = ob[p];
    wt[p * K1] = mk[p];
    for (int64_t k = 0; k < K; ++k) {
      const int32_t n = int32_t(std::min<int64_t>(Draw(cu, ci, M, un[p * K + k]), V - 1));
      tg[p * K1 + 1 + k] = n;
      wt[p * K1 + 1 + k] = n != ob[p] ? mk[p] : 0.f;
    }
    for (int64_t k = 1; k < K1; ++k) PrefetchRow(&wout[int64_t(tg[p * K1 + k]) * D], D);
    float l = 0.f;
    for (int64_t k = 0; k < K1; ++k) {
      const float a = wt[p * K1 + k];
      if (a == 0.f) { coef[p * K1 + k] = 0.f; continue; }
      const float* v = &wout[int64_t(tg[p * K1 + k]) * D];
      const float x = Dot(u, v, D);
      // sigmoid(x) and the loss -log sigmoid(+-x) = softplus(-+x) from one exp.
      const float e = std::exp(-std::fabs(x));
      const float sig = x >= 0.f ? 1.f / (1.f + e) : e / (1.f + e);
      const float z = k == 0 ? -x : x;
      l += a * (std::max(z, 0.f) + Log1pUnit(e));
      const float gk = a * (sig - (k == 0 ? 1.f : 0.f));
      coef[p * K1 + k] = gk;
      Axpy(gk, v, g, D);
    }
    loss[p] = l;
  }

  // Passes 2 and 3: each thread owns the rows that Owner gives it.
#pragma omp parallel num_threads(T)
  {
#ifdef _OPENMP
    const int me = omp_get_thread_num(), team = omp_get_num_threads();
#else
    const int me = 0, team = 1;
#endif
    // Per-thread row counts, kept between calls (OpenMP's threads persist)
    // and all zero between passes: only the rows a step touches are reset,
    // so a step costs nothing in the vocabulary's size.
    static thread_local std::vector<float> count;
    static thread_local std::vector<int64_t> mine;   // this thread's entries: (i, p) pairs
    if (cap > 0.f && int64_t(count.size()) != V) count.assign(V, 0.f);
    auto apply = [&](const int32_t* rows, const float* w, int64_t per_example, const float* coefs,
                     const float* src, bool src_is_table, float* table) {
      mine.clear();
      for (int64_t p = 0, i = 0; p < P; ++p)
        for (int64_t j = 0; j < per_example; ++j, ++i)
          if (w[i] != 0.f && Owner(rows[i], team) == me) {   // counted as XLA counts
            mine.push_back(i);
            mine.push_back(p);
          }
      const int64_t m = int64_t(mine.size());
      if (cap > 0.f)
        for (int64_t j = 0; j < m; j += 2) count[rows[mine[j]]] += w[mine[j]];
      constexpr int64_t kAhead = 16;   // entries ahead (2 per entry): several rows in flight
      for (int64_t j = 0; j < m; j += 2) {
        if (j + kAhead < m) PrefetchRow(&table[int64_t(rows[mine[j + kAhead]]) * D], D);
        const int64_t i = mine[j], p = mine[j + 1];
        if (coefs[i] == 0.f) continue;
        const int32_t r = rows[i];
        const float s = cap > 0.f ? std::min(1.f, cap / std::max(count[r], 1.f)) : 1.f;
        const float* x = src_is_table ? &src[int64_t(cx[p]) * D] : &src[p * D];
        Axpy(-lr * s * coefs[i], x, &table[int64_t(r) * D], D);
      }
      if (cap > 0.f)
        for (int64_t j = 0; j < m; j += 2) count[rows[mine[j]]] = 0.f;
    };
    // Pass 2, w_out: u is w_in's row itself for skip-gram (unchanged until
    // pass 3), else the mean in U.
    apply(tg, wt, K1, coef, one_row ? win : U, one_row, wout);
#pragma omp barrier
    apply(cx, cm, C, cm, G, false, win);                // pass 3: w_in
  }

  double total = 0.0;
  for (int64_t p = 0; p < P; ++p) total += loss[p];
  loss_out->typed_data()[0] = float(total);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SgnsUpdateF32, SgnsUpdate,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::F32>>()   // w_in [V, D]
        .Arg<ffi::Buffer<ffi::F32>>()   // w_out [V, D]
        .Arg<ffi::Buffer<ffi::S32>>()   // ctx [P, C]
        .Arg<ffi::Buffer<ffi::F32>>()   // ctx_mask [P, C]
        .Arg<ffi::Buffer<ffi::S32>>()   // out [P]
        .Arg<ffi::Buffer<ffi::F32>>()   // mask [P]
        .Arg<ffi::Buffer<ffi::F32>>()   // uniform [P, K], the noise words' draws
        .Arg<ffi::Buffer<ffi::F32>>()   // cum [V], the noise distribution's cumulative sum
        .Arg<ffi::Buffer<ffi::S32>>()   // cum_index [M + 1], noise_index(cum)
        .Arg<ffi::Buffer<ffi::F32>>()   // lr []
        .Ret<ffi::Buffer<ffi::F32>>()   // w_in, aliased
        .Ret<ffi::Buffer<ffi::F32>>()   // w_out, aliased
        .Ret<ffi::Buffer<ffi::F32>>()   // summed loss []
        .Attr<float>("cap")
        .Attr<int64_t>("threads"));
