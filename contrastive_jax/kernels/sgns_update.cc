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
// jnp.searchsorted(cum, uniform, side='right'), clipped to V - 1), weights
// a[p, 0] = mask[p] and a[p, k] = mask[p] [t[p, k] != out[p]], logits
// x_k = u . w_out[t_k], and coefficients g_k = a_k (sigmoid(x_k) - [k == 0])
// (the loss's derivative in x_k). Then
//   w_out[t_k]  -= lr s_out(t_k) g_k u              for every (p, k),
//   w_in[ctx_c] -= lr s_in(ctx_c) m_c sum_k g_k w_out[t_k]   for every (p, c)
// (CBOW's update of the context words undivided by their count, as gensim's
// cbow_mean=1), s(r) = min(1, cap / max(count(r), 1)) with count(r) the summed
// weights of the entries hitting row r (cap <= 0: s = 1).
//
// The uniforms are either given ([P, K]) or, when `uniform` is [0, K], drawn
// here from `key` exactly as jax.random.uniform(key, (P, K)) draws them with
// the threefry2x32 PRNG (jax_threefry_partitionable): element n's 32 bits are
// the xor of the two words of threefry2x32(key, (0, n)) (Salmon et al. 2011,
// "Parallel random numbers: as easy as 1, 2, 3"), their top 23 bits the
// mantissa of a float in [1, 2), minus 1. XLA:CPU runs threefry's rounds as a
// loop that costs as much as the rest of the step; here they vectorise.
//
// With `substeps` S > 1 the examples are S consecutive blocks, [P s / S,
// P (s + 1) / S), and the step is S such updates in turn, each at the tables
// the one before left (the same learning rate; the row counts per block):
// smaller updates in sequence, closer to word2vec's example-by-example SGD,
// at the cost of one call. Every pass below runs per block.
//
// An example of mask 0 takes no part (sgns.py masks its context weights
// too). Four passes, each thread on an equal share of the live examples
// (consecutive in example order) in passes 0 and 1 and on the rows it owns
// (a hash of the row) in 2 and 3: (0) the live examples (mask != 0: a grid
// of skip-gram slots is mostly masked, its padding at the end), shared out,
// their noise words and weights, and each entry filed in the list of (its
// example's share, its row's owner); (1) everything that reads the old
// tables: u, the coefficients, the input gradient and the loss, into scratch
// slots indexed by the example's rank among the live ones; (2) the output
// table's updates; (3) the input table's. An owner applies its rows' updates
// in example order (its lists in share order), and the loss is summed in
// example order, so the result is the same bits for any thread count and
// from run to run.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"
#ifdef _OPENMP
#include <omp.h>
#endif

namespace ffi = xla::ffi;

namespace {

// An entry of a table update: element i of the update's index and weight
// arrays, and s, where its source row is (the row of w_in at ctx[s], or row s
// of a scratch array).
struct Entry {
  int32_t i, s;
};

// A dot product of d floats in 16 lanes summed by halves: vectorises, where
// a reduction clause leaves a serial sum of the lanes.
inline float Dot(const float* __restrict a, const float* __restrict b, int64_t d) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float tail = 0.f;
  for (; i < d; ++i) tail += a[i] * b[i];
  for (int w = kLanes / 2; w >= 1; w /= 2) {
#pragma omp simd
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  }
  return acc[0] + tail;
}

inline void Axpy(float alpha, const float* __restrict x, float* __restrict y, int64_t d) {
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) y[i] += alpha * x[i];
}

// exp(x) for x <= 0: x = n ln2 + r, |r| <= ln2 / 2 (ln2 in two parts, Cody
// and Waite), e^r by its Taylor series to r^7 (relative error under 2e-7,
// glibc's expf is within 1 ulp), times 2^n built in the exponent bits; 0
// below -87 (float's smallest normal). Branch-free, so a loop over the K + 1
// logits vectorises; exp(0) = 1 exactly.
inline float ExpNonPositive(float x) {
  x = std::max(x, -87.f);
  const float n = std::nearbyint(x * 1.44269504f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.f / 5040;
  p = p * r + 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += int32_t(n) << 23;
  std::memcpy(&p, &bits, 4);
  return p;
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

inline uint32_t Rotl(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

// Four threefry rounds with these rotations.
inline void Rounds(uint32_t& x0, uint32_t& x1, int r0, int r1, int r2, int r3) {
  x0 += x1; x1 = Rotl(x1, r0); x1 ^= x0;
  x0 += x1; x1 = Rotl(x1, r1); x1 ^= x0;
  x0 += x1; x1 = Rotl(x1, r2); x1 ^= x0;
  x0 += x1; x1 = Rotl(x1, r3); x1 ^= x0;
}

// jax.random.uniform's float32 for element n of a draw with key (k0, k1):
// threefry2x32 of the counter (0, n), 20 rounds with a key injection every
// 4, written out so that a loop over n vectorises.
inline float ThreefryUniform(uint32_t k0, uint32_t k1, uint32_t n) {
  const uint32_t k2 = k0 ^ k1 ^ 0x1BD11BDAu;
  uint32_t x0 = k0, x1 = n + k1;
  Rounds(x0, x1, 13, 15, 26, 6);
  x0 += k1; x1 += k2 + 1u;
  Rounds(x0, x1, 17, 29, 16, 24);
  x0 += k2; x1 += k0 + 2u;
  Rounds(x0, x1, 13, 15, 26, 6);
  x0 += k0; x1 += k1 + 3u;
  Rounds(x0, x1, 17, 29, 16, 24);
  x0 += k1; x1 += k2 + 4u;
  Rounds(x0, x1, 13, 15, 26, 6);
  x0 += k2; x1 += k0 + 5u;
  const uint32_t bits = ((x0 ^ x1) >> 9) | 0x3f800000u;
  float f;
  std::memcpy(&f, &bits, 4);
  return f - 1.f;
}

// The first i with cum[i] > u (V if none), for u in [0, 1): `index` (M + 1
// entries, M a power of 2) holds index[j] = #{i: cum[i] <= j / M}. u M is
// exact, so u lies in bucket b = floor(u M), [b / M, (b + 1) / M), and the
// answer in [index[b], index[b + 1]]: no search when the bucket holds no
// entry of cum (most draws), else a short one without branches on the data
// (a branch per comparison of random draws would be mispredicted half the
// time); the answer stays in [first, first + len].
inline int64_t Draw(const float* cum, const int32_t* index, int64_t M, float u) {
  const int64_t b = std::min<int64_t>(std::max<int64_t>(int64_t(u * float(M)), 0), M - 1);
  const float* first = cum + index[b];
  int64_t len = index[b + 1] - index[b];
  while (len > 1) {
    const int64_t half = len / 2;
    first = first[half - 1] <= u ? first + half : first;
    len -= half;
  }
  return (first - cum) + (len == 1 && *first <= u);
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
  __builtin_prefetch(row + d - 1);
}

// Uninitialised scratch that grows and is kept by the calling thread (one
// call at a time per thread; the OpenMP team only uses pointers).
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
                      ffi::Buffer<ffi::F32> uniform, ffi::Buffer<ffi::U32> key,
                      ffi::Buffer<ffi::F32> cum, ffi::Buffer<ffi::S32> cum_index,
                      ffi::Buffer<ffi::F32> lr_buf, ffi::ResultBuffer<ffi::F32> new_in,
                      ffi::ResultBuffer<ffi::F32> new_out, ffi::ResultBuffer<ffi::F32> loss_out,
                      float cap, int64_t threads, int64_t substeps) {
  const auto tdims = w_in.dimensions();
  if (tdims.size() != 2 || w_out.dimensions().size() != 2 ||
      w_out.dimensions()[0] != tdims[0] || w_out.dimensions()[1] != tdims[1]) {
    return ffi::Error::InvalidArgument("SgnsUpdate: w_in and w_out must be [V, D] alike");
  }
  const int64_t V = tdims[0], D = tdims[1];
  const int64_t P = ctx.dimensions()[0], C = ctx.dimensions()[1];
  const int64_t K = uniform.dimensions()[1], K1 = K + 1;
  const bool given = uniform.dimensions()[0] != 0;
  if (out.element_count() != size_t(P) || mask.element_count() != size_t(P) ||
      (given && uniform.dimensions()[0] != P) || ctx_mask.element_count() != size_t(P * C) ||
      cum.element_count() != size_t(V) || key.element_count() != 2) {
    return ffi::Error::InvalidArgument(
        "SgnsUpdate: ctx, ctx_mask [P, C]; out, mask [P]; uniform [P, K] or [0, K]; key [2]; "
        "cum [V]");
  }
  if (substeps < 1) return ffi::Error::InvalidArgument("SgnsUpdate: substeps must be >= 1");
  if (P * std::max(K1, C) >= (int64_t(1) << 31)) {
    return ffi::Error::InvalidArgument("SgnsUpdate: P (K + 1) and P C must be below 2^31");
  }
  const int32_t* cx = ctx.typed_data();
  const float* cm = ctx_mask.typed_data();
  const int32_t* ob = out.typed_data();
  const float* mk = mask.typed_data();
  const float* un = uniform.typed_data();
  const uint32_t k0 = key.typed_data()[0], k1 = key.typed_data()[1];
  const float* cu = cum.typed_data();
  const int32_t* ci = cum_index.typed_data();
  const int64_t M = int64_t(cum_index.element_count()) - 1;
  if (M < 1 || (M & (M - 1)) != 0 || ci[0] < 0 || ci[M] > V) {
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
  static thread_local std::vector<std::vector<Entry>> out_store, in_store;
  static thread_local std::vector<std::vector<int32_t>> live_store;
  static thread_local std::vector<std::vector<float>> loss_store;
  static thread_local std::vector<int64_t> out_size, in_size, live_size, found_size;
  const int64_t S = substeps, B = (P + S - 1) / S;   // the largest block
  float* U = one_row ? nullptr : Scratch(fstore, fsizes, 0, size_t(B * D));
  float* G = Scratch(fstore, fsizes, 1, size_t(B * D));
  float* coef = Scratch(fstore, fsizes, 2, size_t(B * K1));
  float* wt = Scratch(fstore, fsizes, 3, size_t(B * K1));
  int32_t* tg = Scratch(istore, isizes, 0, size_t(B * K1));
  int32_t* order = Scratch(istore, isizes, 1, size_t(B));   // a block's live examples
  // Per thread q: live[q], its share of a block's examples of mask != 0 in
  // order, and their losses; lists[q * team + o]: the entries of share q's
  // examples whose rows thread o owns. Sized for the worst case and kept between
  // calls; written through cursors, without push_back's checks.
  if (int(out_store.size()) < T * T) {
    out_store.resize(T * T);
    in_store.resize(T * T);
    out_size.resize(T * T);
    in_size.resize(T * T);
  }
  if (int(live_store.size()) < T) {
    live_store.resize(T);
    loss_store.resize(T);
    live_size.resize(T);
    found_size.resize(T);
  }
  std::vector<std::vector<Entry>>& out_lists = out_store;
  std::vector<std::vector<Entry>>& in_lists = in_store;
  std::vector<std::vector<int32_t>>& lives = live_store;
  std::vector<std::vector<float>>& losses = loss_store;
  int64_t* out_n = out_size.data();
  int64_t* in_n = in_size.data();
  int64_t* live_n = live_size.data();
  int64_t* found_n = found_size.data();
  double total = 0.0;   // the loss, in example order whatever the team

#pragma omp parallel num_threads(T)
  {
#ifdef _OPENMP
    const int me = omp_get_thread_num(), team = omp_get_num_threads();
#else
    const int me = 0, team = 1;
#endif
    static thread_local std::vector<float> draws;      // the live examples' uniforms
    static thread_local std::vector<uint32_t> counter;  // ... and their indices in (P, K)
    // Per-thread row counts (passes 2 and 3), kept between calls (OpenMP's
    // threads persist) and all zero between passes: only the rows a block
    // touches are reset, so a step costs nothing in the vocabulary's size.
    static thread_local std::vector<float> count;
    if (cap > 0.f && int64_t(count.size()) != V) count.assign(V, 0.f);
    std::vector<float> x(K1), e(K1);
    std::vector<Entry*> out_at(team), in_at(team);
    for (int64_t blk = 0; blk < S; ++blk) {
      const int64_t first = P * blk / S, size = P * (blk + 1) / S - first;
      const int64_t lo = first + size * me / team, hi = first + size * (me + 1) / team;

      // Pass 0: the block's live examples (mask != 0: a grid of skip-gram
      // slots is mostly masked), each thread finding those of [lo, hi), then
      // shared out evenly in example order (a block's padding sits at its
      // end: ranges of positions would leave one thread most of the work);
      // the share's noise words and weights, and the entry lists.
      int64_t found = 0;
      for (int64_t p = lo; p < hi; ++p) {   // without a branch on the (random) mask
        order[lo - first + found] = int32_t(p);
        found += mk[p] != 0.f;
      }
      found_n[me] = found;
#pragma omp barrier
      int64_t L = 0;
      for (int q = 0; q < team; ++q) L += found_n[q];
      // This thread's share: the block's live examples of rank [base, base + nl).
      const int64_t base = L * me / team, nl = L * (me + 1) / team - base;
      std::vector<int32_t>& live = lives[me];
      if (int64_t(live.size()) < nl) live.resize(nl);
      for (int q = 0, rank = 0; q < team; rank += found_n[q], ++q) {
        const int64_t from = std::max<int64_t>(base, rank);
        const int64_t to = std::min<int64_t>(base + nl, rank + found_n[q]);
        if (from < to)
          std::copy_n(&order[size * q / team + from - rank], to - from, &live[from - base]);
      }
      live_n[me] = nl;
      for (int o = 0; o < team; ++o) {
        std::vector<Entry>& lo_list = out_lists[me * team + o];
        std::vector<Entry>& li_list = in_lists[me * team + o];
        if (int64_t(lo_list.size()) < nl * K1) lo_list.resize(nl * K1);
        if (int64_t(li_list.size()) < nl * C) li_list.resize(nl * C);
        out_at[o] = lo_list.data();
        in_at[o] = li_list.data();
      }
      if (!given) {   // the live examples' elements of jax.random.uniform(key, (P, K))
        draws.resize(size_t(nl * K));
        counter.resize(size_t(nl * K));
        for (int64_t j = 0; j < nl; ++j)
          for (int64_t k = 0; k < K; ++k) counter[j * K + k] = uint32_t(live[j] * K + k);
        float* d = draws.data();
        const uint32_t* n = counter.data();
#pragma omp simd
        for (int64_t j = 0; j < nl * K; ++j) d[j] = ThreefryUniform(k0, k1, n[j]);
      }
      // Live example j of the share has scratch slot base + j (tg, wt, coef,
      // G, U): its rank in the block.
      for (int64_t j = 0; j < nl; ++j) {
        const int64_t p = live[j], slot = base + j;
        const int32_t o = ob[p];
        const float* u = given ? &un[p * K] : &draws[j * K];
        int32_t* t = &tg[slot * K1];
        float* a = &wt[slot * K1];
        t[0] = o;
        a[0] = mk[p];
        for (int64_t k = 0; k < K; ++k) {
          const int32_t n = int32_t(std::min<int64_t>(Draw(cu, ci, M, u[k]), V - 1));
          t[1 + k] = n;
          a[1 + k] = n != o ? mk[p] : 0.f;
        }
        for (int64_t k = 0; k < K1; ++k) {   // appended when the weight is not 0, branch-free
          Entry*& at = out_at[Owner(t[k], team)];
          *at = {int32_t(slot * K1 + k), int32_t(one_row ? p : slot)};
          at += a[k] != 0.f;
        }
        for (int64_t c = 0; c < C; ++c) {
          Entry*& at = in_at[Owner(cx[p * C + c], team)];
          *at = {int32_t(p * C + c), int32_t(slot)};
          at += cm[p * C + c] != 0.f;
        }
      }
      for (int o = 0; o < team; ++o) {
        out_n[me * team + o] = out_at[o] - out_lists[me * team + o].data();
        in_n[me * team + o] = in_at[o] - in_lists[me * team + o].data();
      }

      // Pass 1: per live example, everything that reads the old tables, with
      // the next one's rows on their way.
      std::vector<float>& loss = losses[me];
      if (int64_t(loss.size()) < nl) loss.resize(nl);
      for (int64_t j = 0; j < nl; ++j) {
        const int64_t p = live[j], slot = base + j;
        if (j + 1 < nl) {
          const int64_t q = live[j + 1];
          for (int64_t c = 0; c < C; ++c)
            if (cm[q * C + c] != 0.f) PrefetchRow(&win[int64_t(cx[q * C + c]) * D], D);
          for (int64_t k = 0; k < K1; ++k)
            if (wt[(slot + 1) * K1 + k] != 0.f)
              PrefetchRow(&wout[int64_t(tg[(slot + 1) * K1 + k]) * D], D);
        }
        float* g = &G[slot * D];
        std::fill(g, g + D, 0.f);
        const float* u;
        if (one_row) {
          u = &win[int64_t(cx[p]) * D];
        } else {
          float* acc = &U[slot * D];
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
        const float* a = &wt[slot * K1];
        const int32_t* t = &tg[slot * K1];
        for (int64_t k = 0; k < K1; ++k)
          x[k] = a[k] != 0.f ? Dot(u, &wout[int64_t(t[k]) * D], D) : 0.f;
        // sigmoid(x) and the loss -log sigmoid(+-x) = softplus(-+x) from one exp.
#pragma omp simd
        for (int64_t k = 0; k < K1; ++k) e[k] = ExpNonPositive(-std::fabs(x[k]));
        float l = 0.f;
        for (int64_t k = 0; k < K1; ++k) {
          const float sig = x[k] >= 0.f ? 1.f / (1.f + e[k]) : e[k] / (1.f + e[k]);
          const float z = k == 0 ? -x[k] : x[k];
          l += a[k] * (std::max(z, 0.f) + Log1pUnit(e[k]));
          coef[slot * K1 + k] = a[k] * (sig - (k == 0 ? 1.f : 0.f));
        }
        for (int64_t k = 0; k < K1; ++k)
          if (a[k] != 0.f) Axpy(coef[slot * K1 + k], &wout[int64_t(t[k]) * D], g, D);
        loss[j] = l;
      }
#pragma omp barrier
      if (me == 0)   // the block's losses, in example order
        for (int q = 0; q < team; ++q)
          for (int64_t j = 0; j < live_n[q]; ++j) total += losses[q][j];

      // Passes 2 and 3: each thread applies the updates of the rows it owns.
      auto apply = [&](const std::vector<std::vector<Entry>>& lists, const int64_t* sizes,
                       const int32_t* rows, const float* w, const float* coefs, const float* src,
                       bool src_is_table, float* table) {
        if (cap > 0.f)   // counted as XLA counts: every entry of nonzero weight
          for (int q = 0; q < team; ++q)
            for (int64_t j = 0; j < sizes[q * team + me]; ++j) {
              const int32_t i = lists[q * team + me][j].i;
              count[rows[i]] += w[i];
            }
        constexpr int64_t kAhead = 8;   // entries ahead: several rows in flight
        for (int q = 0; q < team; ++q) {
          const Entry* l = lists[q * team + me].data();
          const int64_t m = sizes[q * team + me];
          for (int64_t j = 0; j < m; ++j) {
            if (j + kAhead < m) PrefetchRow(&table[int64_t(rows[l[j + kAhead].i]) * D], D);
            const int64_t i = l[j].i, at = l[j].s;
            if (coefs[i] == 0.f) continue;
            const int32_t r = rows[i];
            const float s = cap > 0.f ? std::min(1.f, cap / std::max(count[r], 1.f)) : 1.f;
            const float* xs = src_is_table ? &src[int64_t(cx[at]) * D] : &src[at * D];
            Axpy(-lr * s * coefs[i], xs, &table[int64_t(r) * D], D);
          }
        }
        if (cap > 0.f)
          for (int q = 0; q < team; ++q)
            for (int64_t j = 0; j < sizes[q * team + me]; ++j)
              count[rows[lists[q * team + me][j].i]] = 0.f;
      };
      // Pass 2, w_out: u is w_in's row itself for skip-gram (unchanged until
      // pass 3), else the mean in U.
      apply(out_lists, out_n, tg, wt, coef, one_row ? win : U, one_row, wout);
#pragma omp barrier
      apply(in_lists, in_n, cx, cm, cm, G, false, win);   // pass 3: w_in
#pragma omp barrier   // the next block reads the tables and rewrites the lists
    }
  }

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
        .Arg<ffi::Buffer<ffi::F32>>()   // uniform [P, K] (the noise words' draws) or [0, K]
        .Arg<ffi::Buffer<ffi::U32>>()   // key [2]: the draws' threefry key when uniform is [0, K]
        .Arg<ffi::Buffer<ffi::F32>>()   // cum [V], the noise distribution's cumulative sum
        .Arg<ffi::Buffer<ffi::S32>>()   // cum_index [M + 1], noise_index(cum)
        .Arg<ffi::Buffer<ffi::F32>>()   // lr []
        .Ret<ffi::Buffer<ffi::F32>>()   // w_in, aliased
        .Ret<ffi::Buffer<ffi::F32>>()   // w_out, aliased
        .Ret<ffi::Buffer<ffi::F32>>()   // summed loss []
        .Attr<float>("cap")
        .Attr<int64_t>("threads")
        .Attr<int64_t>("substeps"));
