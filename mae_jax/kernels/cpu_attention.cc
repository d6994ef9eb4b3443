// Multi-head softmax attention for XLA:CPU, forward and backward, as XLA FFI
// handlers (see cpu_attention.py for the JAX side and why this exists).
//
// Layout as jax.nn.dot_product_attention: q [B, Tq, H, D], k and v [B, Tk, H, D],
// float32, plus lengths [B] int32 (a key-padding mask): row b attends to its first
// n_b = clamp(lengths[b], 1, Tk) keys; when n_b < Tk its query rows t >= n_b (padding
// tokens of a self-attention) get output 0 and no gradient. Padded keys and queries are skipped, so
// a padded batch costs what its real tokens cost (the sparse-token MAE relies on it). Work is split over the B*H (batch, head) pairs; each pair is copied
// into contiguous, cache-sized buffers and processed in blocks of kRows query
// rows, so the [Tq, Tk] score matrix is never written to memory. The forward
// saves the log-sum-exp per query row; the backward recomputes the
// probabilities from it (FlashAttention's scheme, Dao et al. 2022).
//
// Threads: XLA's own intra-op thread pool (ffi::ThreadPool), plus the calling
// thread, so the kernel does not oversubscribe the cores XLA already uses.

#include <algorithm>
#include <cmath>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kRows = 4;    // query rows processed together (register blocking)
// Key columns per inner block: one vector register. AVX-512: 16 floats; AVX2 and
// narrower: 8, since 16-float blocks there take two registers each, the 2 x kRows
// accumulators spill, and the kernel ran 2-3x slower than XLA's attention (8 lanes:
// level with or ahead of XLA at every length; docs/performance.md). MAE_JAX_LANES overrides (tests).
#if defined(MAE_JAX_LANES)
constexpr int kLanes = MAE_JAX_LANES;
#elif defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
static_assert(kLanes == 8 || kLanes == 16, "MAE_JAX_LANES must be 8 or 16");

// Runs fn(item, scratch_index) for item in [0, n) on the XLA thread pool and
// the calling thread; returns when all items are done.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t max_workers, F&& fn) {
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto shared = std::make_shared<Shared>();
  const int64_t n_total = n;
  auto work = [shared, n_total, &fn](int worker) {
    for (int64_t i; (i = shared->next.fetch_add(1)) < n_total;) {
      fn(i, worker);
      if (shared->done.fetch_add(1) + 1 == n_total) {
        std::lock_guard<std::mutex> lock(shared->mu);
        shared->cv.notify_all();
      }
    }
  };
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(max_workers, n));
  for (int64_t w = 1; w < workers; ++w) {
    // A task that starts after all items are done touches only `shared`.
    pool.Schedule([work, w]() { work(static_cast<int>(w)); });
  }
  work(0);
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done.load() == n_total; });
}

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// kLanes floats as one value (GCC/Clang vector extension): one AVX-512 or AVX2
// register, two NEON registers; unaligned, may alias the float buffers.
typedef float Vec __attribute__((vector_size(4 * kLanes), aligned(4), may_alias));

inline Vec Load(const float* p) { return *reinterpret_cast<const Vec*>(p); }
inline void Store(float* p, Vec v) { *reinterpret_cast<Vec*>(p) = v; }

// exp(x) of kLanes floats at once: Cody-Waite range reduction and the Cephes expf
// polynomial (relative error ~1e-7 on the clamped range). Written on Vec because GCC
// did not vectorise the scalar version's loops ("control flow in loop": the clamps),
// and the exps of the forward and the backward's recomputed probabilities then took
// most of the kernel's time at long sequences.
typedef int32_t IVec __attribute__((vector_size(4 * kLanes)));
inline Vec Exp(Vec x) {
  const Vec lo = Vec{} - 87.0f, hi = Vec{} + 88.0f;  // exp(-87) ~ 1.6e-38: no denormals
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const Vec r = x * 1.44269504088896341f + 12582912.0f;  // round to nearest (1.5 * 2^23)
  const Vec n = r - 12582912.0f;
  const IVec ni = reinterpret_cast<const IVec&>(r) - 0x4B400000;
  const Vec f = x - n * 0.693359375f + n * 2.12194440e-4f;
  Vec p = Vec{} + 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  const Vec y = p * f * f + f + 1.0f;
  const IVec bits = (ni + 127) << 23;
  return y * reinterpret_cast<const Vec&>(bits);
}

// row[j] = exp(row[j] - shift) for j < n, 0 for n <= j < n_pad (n_pad a multiple of kLanes).
inline void ExpShiftedRow(float* row, float shift, int64_t n, int64_t n_pad) {
  for (int64_t j = 0; j < n_pad; j += kLanes) Store(row + j, Exp(Load(row + j) - shift));
  for (int64_t j = n; j < n_pad; ++j) row[j] = 0.0f;
}

// s[r][j] = sum_d q[r][d] * kt[d][j] for kRows rows and j < tk_pad (a multiple of
// 2 * kLanes): 2 x kRows independent accumulators keep both FMA ports busy.
template <int DT>
inline void RowsTimesKt(const float* q, const float* kt, float* s, int64_t tk_pad, int64_t d_rt) {
  const int64_t D = DT > 0 ? DT : d_rt;
  for (int64_t j0 = 0; j0 < tk_pad; j0 += 2 * kLanes) {
    Vec a[2][kRows] = {};
    for (int64_t d = 0; d < D; ++d) {
      const Vec k0 = Load(kt + d * tk_pad + j0), k1 = Load(kt + d * tk_pad + j0 + kLanes);
      for (int r = 0; r < kRows; ++r) {
        const float qv = q[r * D + d];
        a[0][r] += qv * k0;
        a[1][r] += qv * k1;
      }
    }
    for (int r = 0; r < kRows; ++r) {
      Store(s + r * tk_pad + j0, a[0][r]);
      Store(s + r * tk_pad + j0 + kLanes, a[1][r]);
    }
  }
}

// out[r][:] = sum_{j < tk} p[r][j] * m[j][:]  (m is [tk, D] row-major).
template <int DT>
inline void RowsTimesM(const float* p, const float* m, float* out, int64_t tk, int64_t tk_pad,
                       int64_t d_rt) {
  if constexpr (DT > 0 && DT % kLanes == 0) {
    constexpr int kV = DT / kLanes;
    constexpr int kSplit = kV == 1 ? 2 : 1;  // two partial sums when D = kLanes
    Vec a[kSplit][kRows][kV] = {};
    int64_t j = 0;
    for (; j + kSplit <= tk; j += kSplit)
      for (int u = 0; u < kSplit; ++u)
        for (int v = 0; v < kV; ++v) {
          const Vec mv = Load(m + (j + u) * DT + v * kLanes);
          for (int r = 0; r < kRows; ++r) a[u][r][v] += p[r * tk_pad + j + u] * mv;
        }
    for (; j < tk; ++j)
      for (int v = 0; v < kV; ++v) {
        const Vec mv = Load(m + j * DT + v * kLanes);
        for (int r = 0; r < kRows; ++r) a[0][r][v] += p[r * tk_pad + j] * mv;
      }
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < kV; ++v) {
        Vec t = a[0][r][v];
        for (int u = 1; u < kSplit; ++u) t += a[u][r][v];
        Store(out + r * DT + v * kLanes, t);
      }
  } else {  // any head size: plain loops
    const int64_t D = DT > 0 ? DT : d_rt;
    for (int r = 0; r < kRows; ++r)
      for (int64_t d = 0; d < D; ++d) {
        float acc = 0.0f;
        for (int64_t j = 0; j < tk; ++j) acc += p[r * tk_pad + j] * m[j * D + d];
        out[r * D + d] = acc;
      }
  }
}

// acc[d][j] += sum_{r < R} x[r][d] * p[r][j] for d < D, j < tk_pad (acc is [D, tk_pad]):
// dV^T += dO^T P and dK^T += (scale Q)^T dS over a chunk of R query rows. Each
// [kRows, 2 * kLanes] tile of acc stays in registers for all R rows; the earlier
// rank-kRows update of a row-major [tk, D] accumulator loaded and stored all of dK and
// dV once per kRows query rows (memory-bound: one load-store pair per FMA pair).
template <int DT>
inline void AccumulateT(const float* x, const float* p, float* acc, int64_t R, int64_t tk_pad,
                        int64_t d_rt) {
  const int64_t D = DT > 0 ? DT : d_rt;
  int64_t d0 = 0;
  for (; d0 + kRows <= D; d0 += kRows)
    for (int64_t j0 = 0; j0 < tk_pad; j0 += 2 * kLanes) {
      Vec a[2][kRows];
      for (int c = 0; c < kRows; ++c) {
        a[0][c] = Load(acc + (d0 + c) * tk_pad + j0);
        a[1][c] = Load(acc + (d0 + c) * tk_pad + j0 + kLanes);
      }
      for (int64_t r = 0; r < R; ++r) {
        const Vec p0 = Load(p + r * tk_pad + j0), p1 = Load(p + r * tk_pad + j0 + kLanes);
        for (int c = 0; c < kRows; ++c) {
          const float xv = x[r * D + d0 + c];
          a[0][c] += xv * p0;
          a[1][c] += xv * p1;
        }
      }
      for (int c = 0; c < kRows; ++c) {
        Store(acc + (d0 + c) * tk_pad + j0, a[0][c]);
        Store(acc + (d0 + c) * tk_pad + j0 + kLanes, a[1][c]);
      }
    }
  if constexpr (DT == 0 || DT % kRows != 0)
    for (; d0 < D; ++d0)  // head sizes that are not a multiple of kRows
      for (int64_t r = 0; r < R; ++r) {
        const float xv = x[r * D + d0];
        for (int64_t j = 0; j < tk_pad; ++j) acc[d0 * tk_pad + j] += xv * p[r * tk_pad + j];
      }
}

struct Dims {
  int64_t b, tq, tk, h, d;
};

// Copies rows [0, n) of head `hh` in batch `bb` from x [B, t_len, H, D] to dst [n, D].
inline void Gather(const float* x, const Dims& s, int64_t t_len, int64_t n, int64_t bb,
                   int64_t hh, float* dst, float scale = 1.0f) {
  for (int64_t t = 0; t < n; ++t) {
    const float* src = x + ((bb * t_len + t) * s.h + hh) * s.d;
    for (int64_t d = 0; d < s.d; ++d) dst[t * s.d + d] = src[d] * scale;
  }
}

// Writes rows [0, n) of src [n, D] to head `hh` of batch `bb` in x [B, t_len, H, D] and
// zeros rows [n, t_len).
inline void Scatter(const float* src, const Dims& s, int64_t t_len, int64_t n, int64_t bb,
                    int64_t hh, float* x, float scale = 1.0f) {
  for (int64_t t = 0; t < t_len; ++t) {
    float* dst = x + ((bb * t_len + t) * s.h + hh) * s.d;
    for (int64_t d = 0; d < s.d; ++d) dst[d] = t < n ? src[t * s.d + d] * scale : 0.0f;
  }
}

// As Scatter, from a transposed src [D, t_pad].
inline void ScatterT(const float* src, const Dims& s, int64_t t_len, int64_t t_pad, int64_t n,
                     int64_t bb, int64_t hh, float* x) {
  for (int64_t t = 0; t < t_len; ++t) {
    float* dst = x + ((bb * t_len + t) * s.h + hh) * s.d;
    for (int64_t d = 0; d < s.d; ++d) dst[d] = t < n ? src[d * t_pad + t] : 0.0f;
  }
}

// Real keys and queries of batch row `bb` (see the header).
inline void Lengths(const int32_t* lengths, const Dims& s, int64_t bb, int64_t* nk, int64_t* nq) {
  *nk = std::min<int64_t>(std::max<int64_t>(lengths[bb], 1), s.tk);
  *nq = *nk < s.tk ? std::min<int64_t>(*nk, s.tq) : s.tq;  // no padding: every query is real
}

// Transposes m [t_len, D] into mt [D, t_pad] (zero padded columns).
inline void Transpose(const float* m, int64_t t_len, int64_t t_pad, int64_t D, float* mt) {
  for (int64_t d = 0; d < D; ++d) {
    for (int64_t t = 0; t < t_len; ++t) mt[d * t_pad + t] = m[t * D + d];
    for (int64_t t = t_len; t < t_pad; ++t) mt[d * t_pad + t] = 0.0f;
  }
}

// Softmax of the kRows score rows in place over j < tk (columns >= tk set to 0);
// writes the log-sum-exp of each row. `s` holds scaled scores.
inline void SoftmaxRows(float* s, int64_t tk, int64_t tk_pad, float* lse) {
  for (int r = 0; r < kRows; ++r) {
    float* row = s + r * tk_pad;
    // Lane-wise partial max and sum so the loops vectorise without fast-math.
    float part[kLanes];
    for (int l = 0; l < kLanes; ++l) part[l] = row[0];
    int64_t j = 0;
    for (; j + kLanes <= tk; j += kLanes)
      for (int l = 0; l < kLanes; ++l) part[l] = row[j + l] > part[l] ? row[j + l] : part[l];
    float mx = part[0];
    for (int l = 1; l < kLanes; ++l) mx = part[l] > mx ? part[l] : mx;
    for (; j < tk; ++j) mx = row[j] > mx ? row[j] : mx;
    ExpShiftedRow(row, mx, tk, tk_pad);
    for (int l = 0; l < kLanes; ++l) part[l] = 0.0f;
    for (j = 0; j < tk_pad; j += kLanes)
      for (int l = 0; l < kLanes; ++l) part[l] += row[j + l];
    float sum = 0.0f;
    for (int l = 0; l < kLanes; ++l) sum += part[l];
    const float inv = 1.0f / sum;
    for (j = 0; j < tk; ++j) row[j] *= inv;
    lse[r] = mx + std::log(sum);
  }
}

template <int DT>
void ForwardPair(const float* q, const float* k, const float* v, const int32_t* lengths, float* o,
                 float* lse, const Dims& s, float scale, int64_t pair, float* scratch) {
  const int64_t bb = pair / s.h, hh = pair % s.h, D = s.d;
  int64_t nk, nq;
  Lengths(lengths, s, bb, &nk, &nq);
  const int64_t tq_pad = RoundUp(nq, kRows), tk_pad = RoundUp(nk, 2 * kLanes);
  float* qs = scratch;                  // [tq_pad, D] scaled queries
  float* km = qs + tq_pad * D;          // [tk, D]
  float* kt = km + tk_pad * D;          // [D, tk_pad]
  float* vm = kt + D * tk_pad;          // [tk, D]
  float* sc = vm + tk_pad * D;          // [kRows, tk_pad] scores / probabilities
  float* ob = sc + kRows * tk_pad;      // [tq_pad, D]
  float* lb = ob + tq_pad * D;          // [tq_pad]
  Gather(q, s, s.tq, nq, bb, hh, qs, scale);
  std::fill(qs + nq * D, qs + tq_pad * D, 0.0f);
  Gather(k, s, s.tk, nk, bb, hh, km);
  Gather(v, s, s.tk, nk, bb, hh, vm);
  Transpose(km, nk, tk_pad, D, kt);
  for (int64_t i = 0; i < tq_pad; i += kRows) {
    RowsTimesKt<DT>(qs + i * D, kt, sc, tk_pad, D);
    SoftmaxRows(sc, nk, tk_pad, lb + i);
    RowsTimesM<DT>(sc, vm, ob + i * D, nk, tk_pad, D);
  }
  Scatter(ob, s, s.tq, nq, bb, hh, o);
  for (int64_t t = 0; t < s.tq; ++t) lse[(bb * s.h + hh) * s.tq + t] = t < nq ? lb[t] : 0.0f;
}

// Query rows whose probabilities and dS are kept for one dK / dV accumulation
// (AccumulateT): [kChunk, tk_pad] twice, 80 KB each at 626 keys, so they stay in L2.
constexpr int64_t kChunk = 32;
static_assert(kChunk % kRows == 0, "kChunk must be a multiple of kRows");

template <int DT>
void BackwardPair(const float* q, const float* k, const float* v, const int32_t* lengths,
                  const float* o, const float* lse, const float* dout, float* dq, float* dk,
                  float* dv, const Dims& s, float scale, int64_t pair, float* scratch) {
  const int64_t bb = pair / s.h, hh = pair % s.h, D = s.d;
  int64_t nk, nq;
  Lengths(lengths, s, bb, &nk, &nq);
  const int64_t tq_pad = RoundUp(nq, kRows), tk_pad = RoundUp(nk, 2 * kLanes);
  float* qs = scratch;                 // [tq_pad, D] scaled queries
  float* dob = qs + tq_pad * D;        // [tq_pad, D] output gradient
  float* km = dob + tq_pad * D;        // [tk, D]
  float* kt = km + tk_pad * D;         // [D, tk_pad]
  float* vt = kt + D * tk_pad;         // [D, tk_pad]
  float* dkt = vt + D * tk_pad;        // [D, tk_pad] dK^T
  float* dvt = dkt + D * tk_pad;       // [D, tk_pad] dV^T
  float* pb = dvt + D * tk_pad;        // [kChunk, tk_pad] probabilities
  float* dsb = pb + kChunk * tk_pad;   // [kChunk, tk_pad] dP, then dS
  float* dqb = dsb + kChunk * tk_pad;  // [tq_pad, D]
  float* lb = dqb + tq_pad * D;        // [tq_pad]
  float* delta = lb + tq_pad;          // [tq_pad]
  Gather(q, s, s.tq, nq, bb, hh, qs, scale);
  Gather(dout, s, s.tq, nq, bb, hh, dob);
  std::fill(qs + nq * D, qs + tq_pad * D, 0.0f);
  std::fill(dob + nq * D, dob + tq_pad * D, 0.0f);
  Gather(k, s, s.tk, nk, bb, hh, km);
  Transpose(km, nk, tk_pad, D, kt);
  Gather(v, s, s.tk, nk, bb, hh, dkt);  // borrow dkt to transpose v
  Transpose(dkt, nk, tk_pad, D, vt);
  std::fill(dkt, dkt + D * tk_pad, 0.0f);
  std::fill(dvt, dvt + D * tk_pad, 0.0f);
  for (int64_t t = 0; t < tq_pad; ++t) {
    const bool real = t < nq;
    lb[t] = real ? lse[(bb * s.h + hh) * s.tq + t] : 0.0f;
    float acc = 0.0f;
    if (real) {
      const float* orow = o + ((bb * s.tq + t) * s.h + hh) * D;
      for (int64_t d = 0; d < D; ++d) acc += orow[d] * dob[t * D + d];
    }
    delta[t] = acc;
  }
  for (int64_t i0 = 0; i0 < tq_pad; i0 += kChunk) {
    const int64_t rows = std::min<int64_t>(kChunk, tq_pad - i0);  // a multiple of kRows
    for (int64_t i = i0; i < i0 + rows; i += kRows) {
      float* pr = pb + (i - i0) * tk_pad;
      float* dr = dsb + (i - i0) * tk_pad;
      RowsTimesKt<DT>(qs + i * D, kt, pr, tk_pad, D);  // scores
      for (int r = 0; r < kRows; ++r) {
        float* row = pr + r * tk_pad;
        if (i + r < nq) {
          ExpShiftedRow(row, lb[i + r], nk, tk_pad);
        } else {
          std::fill(row, row + tk_pad, 0.0f);  // padded query rows contribute nothing
        }
      }
      RowsTimesKt<DT>(dob + i * D, vt, dr, tk_pad, D);  // dP = dO V^T
      for (int r = 0; r < kRows; ++r) {
        float* ds = dr + r * tk_pad;
        const float* p = pr + r * tk_pad;
        const float dl = delta[i + r];
        for (int64_t j = 0; j < tk_pad; ++j) ds[j] = p[j] * (ds[j] - dl);  // dS
      }
      RowsTimesM<DT>(dr, km, dqb + i * D, nk, tk_pad, D);  // dQ = dS K (x scale below)
    }
    AccumulateT<DT>(dob + i0 * D, pb, dvt, rows, tk_pad, D);  // dV^T += dO^T P
    AccumulateT<DT>(qs + i0 * D, dsb, dkt, rows, tk_pad, D);  // dK^T += (scale Q)^T dS
  }
  Scatter(dqb, s, s.tq, nq, bb, hh, dq, scale);
  ScatterT(dkt, s, s.tk, tk_pad, nk, bb, hh, dk);
  ScatterT(dvt, s, s.tk, tk_pad, nk, bb, hh, dv);
}

ffi::Error CheckDims(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k,
                     const ffi::Buffer<ffi::F32>& v, const ffi::Buffer<ffi::S32>& lengths,
                     Dims* s) {
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4)
    return ffi::Error::InvalidArgument("mae_jax cpu attention: q, k, v must be rank 4 [B, T, H, D]");
  for (int i = 0; i < 4; ++i)
    if (kd[i] != vd[i])
      return ffi::Error::InvalidArgument("mae_jax cpu attention: k and v shapes differ");
  if (qd[0] != kd[0] || qd[2] != kd[2] || qd[3] != kd[3])
    return ffi::Error::InvalidArgument(
        "mae_jax cpu attention: q and k must agree in batch, heads and head_dim");
  *s = Dims{qd[0], qd[1], kd[1], qd[2], qd[3]};
  if (s->tk < 1) return ffi::Error::InvalidArgument("mae_jax cpu attention: no keys");
  auto ld = lengths.dimensions();
  if (ld.size() != 1 || ld[0] != s->b)
    return ffi::Error::InvalidArgument("mae_jax cpu attention: lengths must be [B] int32");
  return ffi::Error::Success();
}

template <typename F>
void DispatchD(int64_t d, F&& f) {
  switch (d) {
    case 16: f(std::integral_constant<int, 16>()); break;
    case 32: f(std::integral_constant<int, 32>()); break;
    case 64: f(std::integral_constant<int, 64>()); break;
    default: f(std::integral_constant<int, 0>()); break;
  }
}

// Runs pair_fn(DT constant, pair, scratch) for every (batch, head) pair on the
// thread pool, each worker with its own `floats_per_worker` of scratch.
template <typename F>
void ForEachPair(ffi::ThreadPool& pool, const Dims& s, int64_t floats_per_worker, F&& pair_fn) {
  const int64_t workers = std::max<int64_t>(1, pool.num_threads());
  std::vector<std::vector<float>> scratch(workers, std::vector<float>(floats_per_worker));
  DispatchD(s.d, [&](auto dt) {
    ParallelFor(pool, s.b * s.h, workers, [&](int64_t pair, int worker) {
      pair_fn(dt, pair, scratch[worker].data());
    });
  });
}

ffi::Error AttentionForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                            ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                            ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> o,
                            ffi::ResultBuffer<ffi::F32> lse, float scale) {
  Dims s;
  if (ffi::Error err = CheckDims(q, k, v, lengths, &s); err.failure()) return err;
  const int64_t tq_pad = RoundUp(s.tq, kRows), tk_pad = RoundUp(s.tk, 2 * kLanes);
  const int64_t per = 2 * tq_pad * s.d + 3 * tk_pad * s.d + kRows * tk_pad + tq_pad + 64;
  ForEachPair(pool, s, per, [&](auto dt, int64_t pair, float* scratch) {
    ForwardPair<decltype(dt)::value>(q.typed_data(), k.typed_data(), v.typed_data(),
                                     lengths.typed_data(), o->typed_data(), lse->typed_data(), s,
                                     scale, pair, scratch);
  });
  return ffi::Error::Success();
}

ffi::Error AttentionBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                             ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                             ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse,
                             ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq,
                             ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv,
                             float scale) {
  Dims s;
  if (ffi::Error err = CheckDims(q, k, v, lengths, &s); err.failure()) return err;
  const int64_t tq_pad = RoundUp(s.tq, kRows), tk_pad = RoundUp(s.tk, 2 * kLanes);
  const int64_t per = 3 * tq_pad * s.d + 5 * tk_pad * s.d + 2 * kChunk * tk_pad + 2 * tq_pad + 64;
  ForEachPair(pool, s, per, [&](auto dt, int64_t pair, float* scratch) {
    BackwardPair<decltype(dt)::value>(q.typed_data(), k.typed_data(), v.typed_data(),
                                      lengths.typed_data(), o.typed_data(), lse.typed_data(), dout.typed_data(),
                                      dq->typed_data(), dk->typed_data(), dv->typed_data(), s,
                                      scale, pair, scratch);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MaeAttentionForward, AttentionForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MaeAttentionBackward, AttentionBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
