// One continuous-batching decode step's attention over the slots' completion KV, for XLA:CPU (jax.ffi).
//
// Per slot s and KV head h (the G query heads that share it): scores of the G queries against the slot's
// earlier completion keys and against its keys of this host call (the float32 call buffer), one softmax over
// both, and the probability-weighted sum of the values.  Only the slot's live positions are read: its first
// before[s] cached positions and call-buffer columns ring_from[s]..step — not the bucketed read length.
// Returns the softmax's running statistics, so the caller combines this part with the prompt's (read once per
// group, in XLA): m = max score, l = sum exp(score - m), o = sum exp(score - m) * value (unnormalised).  A slot
// with nothing to read gets m = -inf, l = 0, o = 0.
//
// Layouts (bf16, chosen for the AVX512-BF16 pair dot, vdpbf16ps, which multiplies two bf16 pairs per lane):
//   keys   kp [S, KV, Dh/2, R, 2]  position i, dims (2p, 2p+1) at [p, i, :] — 16 positions x 2 dims per load
//   values vp [S, KV, R/2, Dh, 2]  positions (2u, 2u+1), dim c at [u, c, :] — 16 dims x 2 positions per load
// The call buffer is float32: keys rk [S, KV, Dh, J] (transposed), values rv [S, KV, J, Dh].
// Arithmetic: as XLA's bf16 path (jaxgrpo/models/transformer.py, _attend_slots): bf16 queries and keys with
// float32 sums; the cached values weighted by bf16-rounded probabilities (here exp(score - m) before the
// division by l, rounded to nearest even), float32 sums.  Without AVX512-BF16 (or for a head dim that is not a
// multiple of 32) portable loops compute the same.
// Work is split over (slot, head) pairs on XLA's intra-op thread pool; the calling thread works too.
// Why: XLA:CPU runs these as [S*KV] batches of 3 x Dh by Dh x R dots at 8-16 GFLOP/s (experiments/README.md).
// Built by jaxgrpo/kernels/cpu.py.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define JAXGRPO_AVX512BF16 1
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kBlock = 32;  // positions scored per block

inline float Widen(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t ToBf16(float x) {  // round to nearest even (finite x)
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// exp(x) for x <= 0 (scores minus their max), in a form the compiler vectorises: 2^n * 2^f, f in [-0.5, 0.5],
// 2^f by Cephes' exp2f polynomial (relative error ~2e-7).  Below -87 it returns ~exp(-87) (the sums it enters
// are >= 1).
inline float ExpNonPositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float t = x * 1.44269504088896341f;
  const float n = std::floor(t + 0.5f);
  const float f = t - n;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

struct Args {
  const uint16_t* q;         // [S, KV, G, Dh] bf16 bits
  const uint16_t* kp;        // [S, KV, Dh/2, R, 2] bf16 bits
  const uint16_t* vp;        // [S, KV, R/2, Dh, 2] bf16 bits
  const int32_t* before;     // [S]
  const float* rk;           // [S, KV, Dh, J]
  const float* rv;           // [S, KV, J, Dh]
  const int32_t* ring_from;  // [S]
  int32_t step;
  float scale;
  int64_t slots, kv, g, dh, r, j;
  float* m;  // [S, KV, G]
  float* l;  // [S, KV, G]
  float* o;  // [S, KV, G, Dh]
};

// ---------------------------------------------------------------------------------------------- portable loops

// out[g * ld + i] = scale * q[g] . key(i) for i < n, bf16 keys in the pair layout (kp: this head's [Dh/2, R, 2]).
template <int G>
void ScorePairsLoop(const uint16_t* q, const uint16_t* kp, int64_t r, int64_t n, int64_t dh, float scale,
                    float* out, int64_t ld, int64_t from) {
  for (int64_t i = from; i < n; ++i)
    for (int g = 0; g < G; ++g) {
      float acc = 0.0f;
      for (int64_t d = 0; d < dh; ++d) acc += Widen(q[g * dh + d]) * Widen(kp[((d >> 1) * r + i) * 2 + (d & 1)]);
      out[g * ld + i] = acc * scale;
    }
}

// o[g, :] += pb[g * ldb + i] * value(i) for i < n, bf16 weights pb, bf16 values in the pair layout.
template <int G>
void AccumulatePairsLoop(const uint16_t* pb, int64_t ldb, const uint16_t* vp, int64_t n, int64_t dh, float* o) {
  for (int64_t i = 0; i < n; ++i)
    for (int g = 0; g < G; ++g) {
      const float w = Widen(pb[g * ldb + i]);
      for (int64_t c = 0; c < dh; ++c) o[g * dh + c] += w * Widen(vp[((i >> 1) * dh + c) * 2 + (i & 1)]);
    }
}

// out[g * ld + i] = scale * qf[g] . rk[:, i] for i < n (float32 keys, transposed, `stride` apart per dim).
template <int G>
void ScoreColumnsLoop(const float* qf, const float* rk, int64_t stride, int64_t n, int64_t dh, float scale,
                      float* out, int64_t ld, int64_t from) {
  for (int64_t i = from; i < n; ++i)
    for (int g = 0; g < G; ++g) {
      float acc = 0.0f;
      for (int64_t d = 0; d < dh; ++d) acc += qf[g * dh + d] * rk[d * stride + i];
      out[g * ld + i] = acc * scale;
    }
}

// o[g, :] += p[g * ld + i] * rv[i, :] for i < n (float32).
template <int G>
void AccumulateRowsLoop(const float* p, int64_t ld, const float* rv, int64_t n, int64_t dh, float* o) {
  for (int64_t i = 0; i < n; ++i)
    for (int g = 0; g < G; ++g) {
      const float w = p[g * ld + i];
      for (int64_t c = 0; c < dh; ++c) o[g * dh + c] += w * rv[i * dh + c];
    }
}

#ifdef JAXGRPO_AVX512BF16
// ---------------------------------------------------------------------------------------------- AVX512-BF16

inline void StoreBlock(float* out, int64_t w, __m512 a, __m512 b, __m512 scale) {
  const __mmask16 m0 = w >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << w) - 1);
  const __mmask16 m1 = w >= 32 ? 0xFFFF : (w <= 16 ? 0 : static_cast<__mmask16>((1u << (w - 16)) - 1));
  _mm512_mask_storeu_ps(out, m0, _mm512_mul_ps(a, scale));
  _mm512_mask_storeu_ps(out + 16, m1, _mm512_mul_ps(b, scale));
}

// Returns the first position left for the loop (blocks need kBlock positions inside the buffer).
template <int G>
int64_t ScorePairs(const uint16_t* q, const uint16_t* kp, int64_t r, int64_t n, int64_t dh, float scale,
                   float* out, int64_t ld) {
  const uint32_t* q2 = reinterpret_cast<const uint32_t*>(q);  // [G, Dh/2] bf16 pairs
  const int64_t pairs = dh / 2;
  int64_t i0 = 0;
  for (; i0 < n && i0 + kBlock <= r; i0 += kBlock) {
    __m512 acc[G][2];
    for (int g = 0; g < G; ++g) acc[g][0] = acc[g][1] = _mm512_setzero_ps();
    for (int64_t p = 0; p < pairs; ++p) {
      const uint16_t* row = kp + (p * r + i0) * 2;
      _mm_prefetch(reinterpret_cast<const char*>(row + 2 * kBlock), _MM_HINT_T0);  // this row, the next block
      _mm_prefetch(reinterpret_cast<const char*>(row + 2 * kBlock + 32), _MM_HINT_T0);
      const __m512bh k0 = (__m512bh)_mm512_loadu_si512(row);
      const __m512bh k1 = (__m512bh)_mm512_loadu_si512(row + 32);
      for (int g = 0; g < G; ++g) {
        const __m512bh qp = (__m512bh)_mm512_set1_epi32(static_cast<int>(q2[g * pairs + p]));
        acc[g][0] = _mm512_dpbf16_ps(acc[g][0], qp, k0);
        acc[g][1] = _mm512_dpbf16_ps(acc[g][1], qp, k1);
      }
    }
    const __m512 sc = _mm512_set1_ps(scale);
    for (int g = 0; g < G; ++g) StoreBlock(out + g * ld + i0, std::min<int64_t>(kBlock, n - i0), acc[g][0],
                                           acc[g][1], sc);
  }
  return i0;
}

// Values in pairs of positions; pb: [G, ldb] bf16 weights (ldb even, pb[g * ldb + n] = 0 when n is odd).
template <int G, int NC>
void AccumulatePairsCols(const uint16_t* pb, int64_t ldb, const uint16_t* vp, int64_t n, int64_t dh, int64_t c0,
                         float* o) {
  const uint32_t* w2 = reinterpret_cast<const uint32_t*>(pb);
  const int64_t full = n / 2;  // pairs of two live positions
  __m512 acc[G][NC];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < NC; ++c) acc[g][c] = _mm512_setzero_ps();
  for (int64_t u = 0; u <= full; ++u) {
    if (u == full && !(n & 1)) break;
    // the last pair of an odd n: its second position is not live (masked out of the load: no NaN can enter)
    const __m512i keep = _mm512_set1_epi32(u == full ? 0x0000FFFF : -1);
    __m512bh v[NC];
    for (int c = 0; c < NC; ++c)
      v[c] = (__m512bh)_mm512_and_si512(_mm512_loadu_si512(vp + (u * dh + c0 + 16 * c) * 2), keep);
    for (int g = 0; g < G; ++g) {
      const __m512bh w = (__m512bh)_mm512_set1_epi32(static_cast<int>(w2[g * (ldb / 2) + u]));
      for (int c = 0; c < NC; ++c) acc[g][c] = _mm512_dpbf16_ps(acc[g][c], w, v[c]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < NC; ++c) {
      float* og = o + g * dh + c0 + 16 * c;
      _mm512_storeu_ps(og, _mm512_add_ps(_mm512_loadu_ps(og), acc[g][c]));
    }
}

template <int G>
void AccumulatePairs(const uint16_t* pb, int64_t ldb, const uint16_t* vp, int64_t n, int64_t dh, float* o) {
  constexpr int kCols = G <= 3 ? 4 : (G <= 6 ? 2 : 1);  // 16-column groups per pass: G * kCols <= 12 registers
  int64_t c0 = 0;
  for (; c0 + 16 * kCols <= dh; c0 += 16 * kCols) AccumulatePairsCols<G, kCols>(pb, ldb, vp, n, dh, c0, o);
  for (; c0 < dh; c0 += 16) AccumulatePairsCols<G, 1>(pb, ldb, vp, n, dh, c0, o);
}

template <int G>
int64_t ScoreColumns(const float* qf, const float* rk, int64_t stride, int64_t n, int64_t room, int64_t dh,
                     float scale, float* out, int64_t ld) {
  int64_t i0 = 0;
  for (; i0 < n && i0 + kBlock <= room; i0 += kBlock) {
    __m512 acc[G][2];
    for (int g = 0; g < G; ++g) acc[g][0] = acc[g][1] = _mm512_setzero_ps();
    for (int64_t d = 0; d < dh; ++d) {
      const __m512 k0 = _mm512_loadu_ps(rk + d * stride + i0);
      const __m512 k1 = _mm512_loadu_ps(rk + d * stride + i0 + 16);
      for (int g = 0; g < G; ++g) {
        const __m512 qd = _mm512_set1_ps(qf[g * dh + d]);
        acc[g][0] = _mm512_fmadd_ps(qd, k0, acc[g][0]);
        acc[g][1] = _mm512_fmadd_ps(qd, k1, acc[g][1]);
      }
    }
    const __m512 sc = _mm512_set1_ps(scale);
    for (int g = 0; g < G; ++g) StoreBlock(out + g * ld + i0, std::min<int64_t>(kBlock, n - i0), acc[g][0],
                                           acc[g][1], sc);
  }
  return i0;
}

template <int G>
void AccumulateRows(const float* p, int64_t ld, const float* rv, int64_t n, int64_t dh, float* o) {
  for (int64_t c0 = 0; c0 < dh; c0 += 32) {
    __m512 acc[G][2];
    for (int g = 0; g < G; ++g) acc[g][0] = acc[g][1] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; ++i) {
      const __m512 v0 = _mm512_loadu_ps(rv + i * dh + c0);
      const __m512 v1 = _mm512_loadu_ps(rv + i * dh + c0 + 16);
      for (int g = 0; g < G; ++g) {
        const __m512 w = _mm512_set1_ps(p[g * ld + i]);
        acc[g][0] = _mm512_fmadd_ps(w, v0, acc[g][0]);
        acc[g][1] = _mm512_fmadd_ps(w, v1, acc[g][1]);
      }
    }
    for (int g = 0; g < G; ++g) {
      float* og = o + g * dh + c0;
      _mm512_storeu_ps(og, _mm512_add_ps(_mm512_loadu_ps(og), acc[g][0]));
      _mm512_storeu_ps(og + 16, _mm512_add_ps(_mm512_loadu_ps(og + 16), acc[g][1]));
    }
  }
}
#endif  // JAXGRPO_AVX512BF16

// ---------------------------------------------------------------------------------------------- one (slot, head)

struct Scratch {
  std::vector<float> scores, qf, ring;
  std::vector<uint16_t> weights;
};

template <int G>
void AttendOne(const Args& a, int64_t s, int64_t h, Scratch& scratch) {
  const int64_t dh = a.dh;
  const int64_t sh = s * a.kv + h;
  const int64_t n = std::clamp<int64_t>(a.before[s], 0, a.r);
  const int64_t j_lo = std::max<int64_t>(a.ring_from[s], 0);
  const int64_t j_hi = std::min<int64_t>(a.step, a.j - 1);
  const int64_t nj = std::max<int64_t>(j_hi - j_lo + 1, 0);
  const int64_t ld = n + nj;
  float* m = a.m + sh * G;
  float* l = a.l + sh * G;
  float* o = a.o + sh * G * dh;
  std::fill(o, o + G * dh, 0.0f);
  if (ld == 0) {
    for (int g = 0; g < G; ++g) m[g] = -std::numeric_limits<float>::infinity(), l[g] = 0.0f;
    return;
  }
  const int64_t ldb = n + (n & 1);  // bf16 weights of the cached positions, padded to whole pairs
  if (static_cast<int64_t>(scratch.scores.size()) < G * ld) scratch.scores.resize(G * ld);
  if (static_cast<int64_t>(scratch.weights.size()) < G * ldb) scratch.weights.resize(G * ldb);
  if (static_cast<int64_t>(scratch.qf.size()) < G * dh) scratch.qf.resize(G * dh);
  float* sc = scratch.scores.data();
  uint16_t* pb = scratch.weights.data();
  float* qf = scratch.qf.data();
  const uint16_t* q = a.q + sh * G * dh;
  for (int64_t i = 0; i < G * dh; ++i) qf[i] = Widen(q[i]);
  const uint16_t* kp = a.kp + sh * dh * a.r;
  const uint16_t* vp = a.vp + sh * a.r * dh;
  const float* rk = a.rk + sh * dh * a.j;
  const float* rv = a.rv + (sh * a.j + j_lo) * dh;
  const bool vec = dh % 32 == 0;
  // the call buffer's columns 0..j_hi scored (whole blocks from column 0), then j_lo..j_hi kept
  const int64_t nr = nj ? j_hi + 1 : 0;
  if (static_cast<int64_t>(scratch.ring.size()) < G * nr) scratch.ring.resize(G * nr);
  float* rs = scratch.ring.data();
  int64_t done = 0, done_ring = 0;
#ifdef JAXGRPO_AVX512BF16
  if (vec) {
    done = ScorePairs<G>(q, kp, a.r, n, dh, a.scale, sc, ld);
    done_ring = ScoreColumns<G>(qf, rk, a.j, nr, a.j, dh, a.scale, rs, nr);
  }
#endif
  ScorePairsLoop<G>(q, kp, a.r, n, dh, a.scale, sc, ld, done);
  ScoreColumnsLoop<G>(qf, rk, a.j, nr, dh, a.scale, rs, nr, done_ring);
  if (nj)
    for (int g = 0; g < G; ++g) std::copy(rs + g * nr + j_lo, rs + g * nr + nr, sc + g * ld + n);
  for (int g = 0; g < G; ++g) {
    float* row = sc + g * ld;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < ld; ++i) mx = std::max(mx, row[i]);
    float sum = 0.0f;
    for (int64_t i = 0; i < ld; ++i) {
      row[i] = ExpNonPositive(row[i] - mx);
      sum += row[i];
    }
    m[g] = mx;
    l[g] = sum;
    for (int64_t i = 0; i < n; ++i) pb[g * ldb + i] = ToBf16(row[i]);
    if (n & 1) pb[g * ldb + n] = 0;
  }
#ifdef JAXGRPO_AVX512BF16
  if (vec) {
    AccumulatePairs<G>(pb, ldb, vp, n, dh, o);
    AccumulateRows<G>(sc + n, ld, rv, nj, dh, o);
    return;
  }
#endif
  AccumulatePairsLoop<G>(pb, ldb, vp, n, dh, o);
  AccumulateRowsLoop<G>(sc + n, ld, rv, nj, dh, o);
}

using Fn = void (*)(const Args&, int64_t, int64_t, Scratch&);

Fn Pick(int64_t g) {
  switch (g) {
    case 1: return AttendOne<1>;
    case 2: return AttendOne<2>;
    case 3: return AttendOne<3>;
    case 4: return AttendOne<4>;
    case 5: return AttendOne<5>;
    case 6: return AttendOne<6>;
    case 7: return AttendOne<7>;
    case 8: return AttendOne<8>;
    default: return nullptr;
  }
}

struct Work {
  Args args;
  Fn fn;
  int64_t tasks, chunk, chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Drain() {
    thread_local Scratch scratch;
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      const int64_t end = std::min(tasks, (c + 1) * chunk);
      for (int64_t t = c * chunk; t < end; ++t) fn(args, t / args.kv, t % args.kv, scratch);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error DecodeAttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> q, ffi::Buffer<ffi::BF16> kp,
                               ffi::Buffer<ffi::BF16> vp, ffi::Buffer<ffi::S32> before, ffi::Buffer<ffi::F32> rk,
                               ffi::Buffer<ffi::F32> rv, ffi::Buffer<ffi::S32> ring_from,
                               ffi::Buffer<ffi::S32> step, float scale, ffi::ResultBuffer<ffi::F32> m,
                               ffi::ResultBuffer<ffi::F32> l, ffi::ResultBuffer<ffi::F32> o) {
  auto qd = q.dimensions(), kd = kp.dimensions(), vd = vp.dimensions(), rd = rk.dimensions();
  if (qd.size() != 4 || kd.size() != 5 || vd.size() != 5 || rd.size() != 4)
    return ffi::Error::InvalidArgument("decode_attention: q [S,KV,G,Dh], kp [S,KV,Dh/2,R,2], vp [S,KV,R/2,Dh,2], "
                                       "rk [S,KV,Dh,J]");
  auto w = std::make_shared<Work>();
  Args& a = w->args;
  a.slots = qd[0], a.kv = qd[1], a.g = qd[2], a.dh = qd[3], a.r = kd[3], a.j = rd[3];
  if (a.dh % 2 || kd[0] != a.slots || kd[1] != a.kv || kd[2] * 2 != a.dh || kd[4] != 2 || vd[2] * 2 != a.r ||
      vd[3] != a.dh || vd[4] != 2 || rd[2] != a.dh)
    return ffi::Error::InvalidArgument("decode_attention: inconsistent shapes");
  w->fn = Pick(a.g);
  if (w->fn == nullptr) return ffi::Error::InvalidArgument("decode_attention: 1 to 8 query heads per KV head");
  a.q = reinterpret_cast<const uint16_t*>(q.typed_data());
  a.kp = reinterpret_cast<const uint16_t*>(kp.typed_data());
  a.vp = reinterpret_cast<const uint16_t*>(vp.typed_data());
  a.before = before.typed_data();
  a.rk = rk.typed_data();
  a.rv = rv.typed_data();
  a.ring_from = ring_from.typed_data();
  a.step = step.typed_data()[0];
  a.scale = scale;
  a.m = m->typed_data();
  a.l = l->typed_data();
  a.o = o->typed_data();
  w->tasks = a.slots * a.kv;
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  w->chunk = std::max<int64_t>(1, w->tasks / (4 * threads));
  w->chunks = (w->tasks + w->chunk - 1) / w->chunk;
  const int64_t helpers = std::min<int64_t>(threads, w->chunks) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([w] { w->Drain(); });
  w->Drain();
  while (w->done.load(std::memory_order_acquire) < w->chunks) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxgrpoDecodeAttention, DecodeAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
