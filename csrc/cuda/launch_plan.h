// Launch planning of the CUDA kernels in plain C++: how a batch is cut into chunks, a
// per-(n, c) reduction into segments and partials, and the elementwise pass into vectors,
// and which elements and partials each thread touches. The kernels (reduce.cuh,
// elementwise.cuh) call these functions for every offset they load and store, and
// tests/cpp/test_launch_plan.cpp (tests/test_launch_plan.py, the system g++) runs the same
// functions on the host over many shapes, vector widths, layouts and SM counts to check that
// every element is read once, every partial written once, and the finalize's segment counts
// hold. Nothing here may use a CUDA or ATen type, so that the test needs neither.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#ifdef __CUDACC__
#define RF_HD __host__ __device__ __forceinline__
#else
#define RF_HD inline
#endif

namespace resnet_fast {
namespace cuda {

constexpr int kThreads = 256;  // every kernel's block size
constexpr int kWarpSize = 32;
// Largest element count one launch indexes; the margin keeps offsets computed one
// unrolled step past the end (never dereferenced) from overflowing 32-bit arithmetic.
constexpr int64_t kMaxChunkElements = INT32_MAX - (1 << 20);

enum class Layout : int { NCHW = 0, NHWC = 1 };

// An activation argument as the kernels see it.
struct ActivationInfo {
  Layout layout;
  int64_t N, C, HW;
  int64_t numel() const { return N * C * HW; }
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int64_t pow2_floor(int64_t x) {  // the largest power of two <= x (1 for x < 1)
  int64_t p = 1;
  while (p * 2 <= x) p <<= 1;
  return p;
}

inline int64_t pow2_ceil(int64_t x) {
  int64_t p = 1;
  while (p < x) p <<= 1;
  return p;
}

RF_HD uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }

inline int log2_exact(int64_t p) {  // p a power of two
  int k = 0;
  while ((int64_t(1) << k) < p) ++k;
  return k;
}

// Division of x < 2^31 by a run-time divisor d in [1, 2^31) with a multiply and a shift
// (Granlund-Montgomery, as ATen's IntDivider; plain C++ so the host test runs it):
// q = (umulhi(x, m) + x) >> shift with shift = ceil(log2 d), m = floor(2^32 (2^shift - d) / d) + 1.
struct FastDiv {
  uint32_t d, m, shift;
  struct DivMod {
    uint32_t div, mod;
  };
  FastDiv() = default;
  explicit FastDiv(uint32_t divisor) : d(divisor), m(0), shift(0) {
    while (shift < 32 && (uint64_t(1) << shift) < d) ++shift;
    m = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }
  RF_HD uint32_t div(uint32_t x) const {
#ifdef __CUDA_ARCH__
    const uint32_t t = __umulhi(x, m);
#else
    const uint32_t t = static_cast<uint32_t>((static_cast<uint64_t>(x) * m) >> 32);
#endif
    return (t + x) >> shift;
  }
  RF_HD DivMod divmod(uint32_t x) const {
    const uint32_t q = div(x);
    return {q, x - q * d};
  }
};

// ----------------------------------------------------------------------------- chunks
// Samples per chunk: runs of whole samples holding at most max_elements elements each (one
// run for every ResNet shape); 0 when a single sample exceeds the limit (the caller errors).
inline int64_t chunk_samples(const ActivationInfo& info, int64_t max_elements = kMaxChunkElements) {
  const int64_t per_sample = info.C * info.HW;
  if (per_sample > max_elements) return 0;
  return std::max<int64_t>(1, max_elements / std::max<int64_t>(per_sample, 1));
}

// Calls f(n0, count) for each chunk; chunk_samples(info, max_elements) must be > 0.
template <class F>
void for_each_chunk_of(const ActivationInfo& info, int64_t max_elements, F&& f) {
  const int64_t step = chunk_samples(info, max_elements);
  for (int64_t n0 = 0; n0 < info.N; n0 += step) f(n0, std::min(step, info.N - n0));
}

// Offsets of sample n0 in an activation, in an (N, C) coefficient, and in an (N, S, C)
// partials workspace: a chunk's pointers are the tensors' advanced by these.
inline int64_t sample_offset(const ActivationInfo& info, int64_t n0) { return n0 * info.C * info.HW; }
inline int64_t nc_offset(const ActivationInfo& info, int64_t n0) { return n0 * info.C; }
inline int64_t partial_offset(const ActivationInfo& info, int S, int64_t n0) { return n0 * S * info.C; }

// ----------------------------------------------------------------------------- reductions
// How one reduction is split into work (the same for every chunk).
struct ReducePlan {
  Layout layout;
  int V;       // elements per load: the 16-byte width, half of it (8 bytes), or 1
  int S;       // segments per plane (NCHW) or per sample's rows (NHWC)
  int L;       // segment length in hw positions (NCHW: a multiple of V)
  int G;       // NCHW: lanes per unit; NHWC: TX, channel vectors per block (power of two <= 32)
  int cvecs;   // NHWC: channel vectors per row, C / V
  int ctiles;  // NHWC: blocks across the channels, ceil(cvecs / TX); must be <= 65535
};

// Elements per load of a reduction: the largest of the 16-byte width `vec`, its half (8-byte
// loads) and 1 whose loads are aligned: the run length (NCHW: H*W, each plane's start; NHWC:
// C, each row's start) a multiple of it, and its byte size dividing `align` (the largest power
// of two, <= 16, dividing every activation pointer). NHWC kernels also load V per-channel
// coefficients (acc_t) per thread, 16 bytes at a time when V * sizeof(acc_t) is a multiple of
// 16: then `coef_align` (the coefficient pointers' alignment) must be 16 too. NCHW kernels read
// one coefficient per plane (scalar), whatever its alignment.
inline int reduce_width(const ActivationInfo& info, int vec, int align, int coef_align) {
  const int elem_bytes = 16 / vec;
  const int acc_bytes = elem_bytes == 8 ? 8 : 4;
  const int64_t run = info.layout == Layout::NCHW ? info.HW : info.C;
  for (int w = vec; w >= 2 && w * 2 >= vec; w /= 2) {
    if (run % w != 0 || align % (w * elem_bytes) != 0) continue;
    if (info.layout == Layout::NHWC && (w * acc_bytes) % 16 == 0 && coef_align < 16) continue;
    return w;
  }
  return 1;
}

// Work split of a per-(n, c) reduction. Enough units to fill every SM (a wave of warps at
// full occupancy for NCHW, 8 blocks per SM for NHWC), splitting planes into segments only
// when the batch alone does not, and never below two batches of loads per thread.
// `vec`: the 16-byte width of the dtype; `unroll`, `row_unroll`: the Op's kUnroll and
// kRowUnroll; `align`, `coef_align`: see reduce_width; `sms`: the device's multiprocessor
// count. S therefore depends on N, C, HW, the SM count and the alignment, and so does the
// summation order (csrc/cuda/NOTES.md, "Reproducibility").
inline ReducePlan plan_reduce(const ActivationInfo& info, int vec, int unroll, int row_unroll, int align,
                              int coef_align, int sms) {
  ReducePlan p{};
  p.layout = info.layout;
  const int64_t N = info.N, C = info.C, HW = info.HW;
  p.V = reduce_width(info, vec, align, coef_align);
  const int64_t V = p.V;
  int64_t S = 1;
  if (info.layout == Layout::NCHW) {
    // G: lanes per plane, so that each lane loads at least two full batches (the fixed cost of a
    // unit, ~100 instructions of prologue, partial batch and store, is then amortized over
    // >= 2*U*V values; 7x7 planes get 4 lanes of 12 values, not 8 lanes of 6).
    p.G = static_cast<int>(std::clamp<int64_t>(pow2_floor(HW / (2 * unroll * V)), 1, kWarpSize));
    const int64_t warps = ceil_div(N * C, kWarpSize / p.G);
    const int64_t target = static_cast<int64_t>(sms) * 64;
    if (warps < target) S = std::min(ceil_div(target, warps), std::max<int64_t>(1, HW / (p.G * V * unroll * 2)));
    const int64_t L = ceil_div(ceil_div(HW, S), V) * V;
    p.L = static_cast<int>(L);
    p.S = static_cast<int>(ceil_div(HW, L));
    return p;
  }
  p.cvecs = static_cast<int>(C / V);
  p.G = static_cast<int>(std::clamp<int64_t>(pow2_ceil(p.cvecs), 1, kWarpSize));
  p.ctiles = static_cast<int>(ceil_div(p.cvecs, p.G));
  const int64_t TY = kThreads / p.G;
  const int64_t blocks = N * p.ctiles;
  const int64_t target = static_cast<int64_t>(sms) * 8;
  if (blocks < target) S = std::min(ceil_div(target, blocks), std::max<int64_t>(1, HW / (TY * row_unroll * 2)));
  const int64_t L = ceil_div(HW, S);
  p.L = static_cast<int>(L);
  p.S = static_cast<int>(ceil_div(HW, L));
  return p;
}

// Values in segment s of a plane (NCHW) or of a sample's rows (NHWC): what the finalize
// kernels weight segment s's partial with.
RF_HD int64_t segment_count(int64_t HW, int64_t L, int s) {
  const int64_t rest = HW - static_cast<int64_t>(s) * L;
  return rest < L ? rest : L;
}

// What the stage-1 kernels read (a chunk of samples). The divisions of the thread
// prologue are shifts (G, TX: powers of two) or multiply-shifts (FastDiv by S and C).
struct ReduceGrid {
  int C, HW;
  int S, L, G;
  int log2G;    // G = 1 << log2G
  int cvecs;    // NHWC
  int units;    // NCHW: planes * S in this chunk
  FastDiv div_S, div_C;
};

// The stage-1 launch of one chunk of n_chunk samples: its grid (x, y) and what it reads.
struct ReduceLaunch {
  ReduceGrid g;
  int64_t blocks_x, blocks_y;
};

inline ReduceLaunch reduce_launch(const ReducePlan& plan, const ActivationInfo& info, int64_t n_chunk) {
  ReduceLaunch l{};
  l.g.C = static_cast<int>(info.C);
  l.g.HW = static_cast<int>(info.HW);
  l.g.S = plan.S;
  l.g.L = plan.L;
  l.g.G = plan.G;
  l.g.log2G = log2_exact(plan.G);
  l.g.cvecs = plan.cvecs;
  l.g.div_S = FastDiv(static_cast<uint32_t>(plan.S));
  l.g.div_C = FastDiv(static_cast<uint32_t>(info.C));
  l.blocks_y = 1;
  if (plan.layout == Layout::NCHW) {
    const int64_t units = n_chunk * info.C * plan.S;  // <= chunk numel: fits int
    l.g.units = static_cast<int>(units);
    l.blocks_x = ceil_div(units, kThreads / plan.G);
  } else {
    l.blocks_x = n_chunk * plan.S;
    l.blocks_y = plan.ctiles;
  }
  return l;
}

// NCHW: thread `tid` of block `bx` is lane `lane` of unit (nc, s); a unit is one segment of
// plane nc = n*C + c, s fastest.
struct NchwUnit {
  bool active;  // unit < units (the last block's spare groups idle)
  int lane, nc, s, n, c;
};

RF_HD NchwUnit nchw_unit(const ReduceGrid& g, int bx, int tid) {
  NchwUnit u{};
  u.lane = tid & (g.G - 1);
  const int unit = (bx << (8 - g.log2G)) + (tid >> g.log2G);  // kThreads / G units per block
  u.active = unit < g.units;
  if (u.active) {
    const FastDiv::DivMod ns = g.div_S.divmod(static_cast<uint32_t>(unit));
    u.nc = static_cast<int>(ns.div);
    u.s = static_cast<int>(ns.mod);
    const FastDiv::DivMod nc = g.div_C.divmod(ns.div);
    u.n = static_cast<int>(nc.div);
    u.c = static_cast<int>(nc.mod);
  }
  return u;
}
static_assert(kThreads == 1 << 8, "nchw_unit shifts by log2(kThreads)");

// Chunk offset of the first element of unit u's segment (every lane may read it: the
// bn_stats shift).
RF_HD uint32_t nchw_first(const ReduceGrid& g, const NchwUnit& u) {
  return static_cast<uint32_t>(u.nc) * g.HW + static_cast<uint32_t>(u.s) * g.L;
}

// The batches lane u.lane loads from its unit: f(off, k) with off[0..U) the chunk offsets of
// U packs of V elements, k (>= 1) of them inside the segment (a prefix). Lanes are
// V-strided, so a group's accesses are contiguous. Full batches (k == U, a constant at that
// call) first, then at most one partial batch, so the hot loop carries no per-pack bounds.
template <int V, int U, class F>
RF_HD void nchw_batches(const ReduceGrid& g, const NchwUnit& u, F&& f) {
  const uint32_t base = static_cast<uint32_t>(u.nc) * g.HW;  // plane start; < chunk numel
  const uint32_t a = static_cast<uint32_t>(u.s) * g.L;
  const uint32_t b = min_u32(a + g.L, static_cast<uint32_t>(g.HW));
  const uint32_t step = static_cast<uint32_t>(g.G) * V;
  uint32_t e = a + u.lane * V;
  for (; e + (U - 1) * step < b; e += step * U) {  // e < HW + 32*8*U: no overflow
    uint32_t off[U];
#pragma unroll
    for (int i = 0; i < U; ++i) off[i] = base + e + i * step;
    f(off, U);
  }
  if (e < b) {
    uint32_t off[U];
    int k = 0;
#pragma unroll
    for (int i = 0; i < U; ++i) {
      const uint32_t ei = e + i * step;
      off[i] = base + ei;
      k += ei < b;
    }
    f(off, k);
  }
}

// The partial unit u's lane 0 writes: (n, s, c) of the chunk's (N, S, C) workspace.
RF_HD int nchw_partial(const ReduceGrid& g, const NchwUnit& u) { return (u.n * g.S + u.s) * g.C + u.c; }

// NHWC: block (bx, by) = (segment s of sample n, channel tile); thread (tx, ty) owns channel
// vector cv (channels [cv*V, cv*V + V)) and rows ty, ty + TY, ... of the segment.
struct NhwcThread {
  bool active;  // cv < cvecs (the last channel tile's spare columns idle)
  int n, s, cv, tx, ty, TX, TY;
};

RF_HD NhwcThread nhwc_thread(const ReduceGrid& g, int bx, int by, int tid) {
  NhwcThread t{};
  t.TX = g.G;
  t.TY = kThreads >> g.log2G;
  t.tx = tid & (t.TX - 1);
  t.ty = tid >> g.log2G;
  t.cv = (by << g.log2G) + t.tx;
  t.active = t.cv < g.cvecs;
  const FastDiv::DivMod ns = g.div_S.divmod(static_cast<uint32_t>(bx));
  t.n = static_cast<int>(ns.div);
  t.s = static_cast<int>(ns.mod);
  return t;
}

// Chunk offset of channel vector t.cv in the first row of t's segment (the bn_stats shift).
template <int V>
RF_HD uint32_t nhwc_first(const ReduceGrid& g, const NhwcThread& t) {
  return (static_cast<uint32_t>(t.n) * g.HW + static_cast<uint32_t>(t.s) * g.L) * g.C + t.cv * V;
}

// The batches of rows thread t loads: f(off, k) with off[0..U) the chunk offsets of U rows'
// V channels, k (>= 1) of them inside the segment (a prefix); full batches first, then at
// most one partial one.
template <int V, int U, class F>
RF_HD void nhwc_batches(const ReduceGrid& g, const NhwcThread& t, F&& f) {
  const uint32_t r0 = static_cast<uint32_t>(t.s) * g.L;
  const uint32_t r1 = min_u32(r0 + g.L, static_cast<uint32_t>(g.HW));
  const uint32_t row_base = static_cast<uint32_t>(t.n) * g.HW;  // sample's first row
  const uint32_t TY = static_cast<uint32_t>(t.TY);
  uint32_t r = r0 + t.ty;
  for (; r + (U - 1) * TY < r1; r += TY * U) {
    uint32_t off[U];
#pragma unroll
    for (int i = 0; i < U; ++i) off[i] = (row_base + r + i * TY) * g.C + t.cv * V;
    f(off, U);
  }
  if (r < r1) {
    uint32_t off[U];
    int k = 0;
#pragma unroll
    for (int i = 0; i < U; ++i) {
      const uint32_t ri = r + i * TY;
      off[i] = (row_base + ri) * g.C + t.cv * V;  // wraps harmlessly past the end: not loaded
      k += ri < r1;
    }
    f(off, k);
  }
}

// The first of the V partials thread t (ty == 0) writes: (n, s, cv*V + j) for j < V.
RF_HD int nhwc_partial(const ReduceGrid& g, const NhwcThread& t, int V) { return (t.n * g.S + t.s) * g.C + t.cv * V; }

// ----------------------------------------------------------------------------- stage 2
// The stage-2 kernels (bn_stats.cu, scale_shift_act_backward_reduce.cu) run blocks of 32
// channels (tx) x 32 rows (ty). The (n, s) partials of a channel are spread over the rows
// in passes: a pass covers Q = 32 / P samples, each merged by a group of P lanes (rows
// ty = q*P + p): lane p takes segments p, p + P, ... in order, then the group merges in a
// fixed shared-memory tree (pairs (p, p + stride), stride = P/2 .. 1). P > 1 only when the
// batch leaves rows idle (N < 32) and a sample has several segments (small N is exactly
// when S grows), so that at N = 1 the S segments of a sample merge 32-wide, not serially in
// one thread. The order depends on (N, S) only: deterministic for a plan.
constexpr int kFinalizeRows = 32;

// log2 P: P = the largest power of two with P <= S and P * min(N, 32) <= 32 (one pass when N < 32).
inline int finalize_log2_lanes(int64_t N, int S) {
  const int64_t busy = std::clamp<int64_t>(N, 1, kFinalizeRows);
  int k = 0;
  while ((int64_t(2) << k) <= S && (int64_t(2) << k) * busy <= kFinalizeRows) ++k;
  return k;
}

// Row ty's sample in the pass starting at sample n0, and its lane in that sample's group.
RF_HD int64_t finalize_sample(int64_t n0, int ty, int log2P) { return n0 + (ty >> log2P); }
RF_HD int finalize_lane(int ty, int log2P) { return ty & ((1 << log2P) - 1); }
// Samples per pass.
RF_HD int finalize_pass(int log2P) { return kFinalizeRows >> log2P; }

// The segments lane p of a group of P merges, in order: f(s).
template <class F>
RF_HD void finalize_segments(int S, int log2P, int p, F&& f) {
  for (int s = p; s < S; s += 1 << log2P) f(s);
}

// ----------------------------------------------------------------------------- elementwise
// Whether 16-byte vectors of V elements apply to a layout (pointer alignment aside): in
// NCHW a vector may straddle two planes (needs HW >= V), in NHWC it must not leave a row.
inline bool elementwise_vec_shape_ok(const ActivationInfo& info, int V) {
  return info.layout == Layout::NCHW ? info.HW >= V : info.C % V == 0;
}

// Whether a pass runs with 16-byte vectors: the shape allows it, every activation pointer is
// 16-byte aligned (`align`), and in NHWC, where a vector's V coefficients are read with
// 16-byte loads, every coefficient pointer too (`coef_align`); NCHW reads coefficients one
// by one, so a coefficient view at any offset keeps the 16-byte activation accesses.
inline bool elementwise_vec(const ActivationInfo& info, int V, int align, int coef_align) {
  if (!elementwise_vec_shape_ok(info, V) || align < 16) return false;
  return info.layout == Layout::NCHW || coef_align >= 16;
}

// Grid of the elementwise kernels: enough blocks for the vectors, at most 16 per SM (the
// grid-stride loop does the rest).
inline unsigned elementwise_blocks(int64_t numel, int vec, int sms) {
  const int64_t blocks = ceil_div(numel / vec, kThreads);
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, static_cast<int64_t>(sms) * 16));
}

// The elements thread `first` (blockIdx.x * kThreads + threadIdx.x) of a grid of `stride`
// threads processes, in a grid-stride loop over vectors of V elements: f(i0, IntC<K>, IntC<W>)
// processes K vectors of W elements, vector k being [i0[k], i0[k] + W). First batches of
// K = U vectors (v, v + stride, ..., v + (U-1)*stride: the kernel issues all their loads
// before it stores anything), then the thread's remaining vectors one at a time (K = 1), then
// one of the last numel % V elements (K = 1, W = 1).
template <int V, int U, class F>
RF_HD void elementwise_thread(uint32_t numel, uint32_t first, uint32_t stride, F&& f) {
  const uint32_t nvec = numel / V;
  uint32_t v = first;
  // v + U*stride < 2^31 + 2^23: no wrap (numel < 2^31, stride <= 16 blocks * 256 threads * SMs)
  for (; v + (U - 1) * stride < nvec; v += U * stride) {
    uint32_t i0[U];
#pragma unroll
    for (int k = 0; k < U; ++k) i0[k] = (v + k * stride) * V;
    f(i0, std::integral_constant<int, U>{}, std::integral_constant<int, V>{});
  }
  for (; v < nvec; v += stride) {
    uint32_t i0[U] = {v * V};
    f(i0, std::integral_constant<int, 1>{}, std::integral_constant<int, V>{});
  }
  if constexpr (V > 1) {
    const uint32_t i = nvec * V + first;
    if (i < numel) {
      uint32_t i0[U] = {i};
      f(i0, std::integral_constant<int, 1>{}, std::integral_constant<int, 1>{});
    }
  }
}

// Coefficient indices of a vector starting at element i0.
struct Pos {
  uint32_t nc0;    // per-(n, c) index of element 0
  uint32_t c0;     // channel of element 0
  uint32_t c1;     // NCHW: channel of the next plane
  uint32_t split;  // NCHW: elements j >= split belong to plane nc0 + 1
};

// Where the coefficients of the vector of V elements at i0 are. Div: a divider with
// divmod(x) -> {div, mod}, div(x), mod(x) (ATen's IntDivider on the GPU, a plain one in
// the host test), for C (div_c) and H*W (div_hw).
//   NCHW (V > 1 needs HW >= V): the vector lies in plane nc0 except its elements
//     j >= split, which lie in plane nc0 + 1 (HW % V != 0 only: 7x7, 14x14).
//   NHWC (V > 1 needs C % V == 0): the vector holds channels c0 .. c0+V-1 of one sample.
template <int V, Layout L, class Div>
RF_HD Pos position(uint32_t i0, uint32_t C, uint32_t HW, const Div& div_c, const Div& div_hw) {
  Pos p;
  if constexpr (L == Layout::NCHW) {
    const auto plane = div_hw.divmod(i0);  // i0 = nc*HW + hw
    p.nc0 = plane.div;
    p.c0 = div_c.mod(p.nc0);
    p.c1 = p.c0 + 1 == C ? 0 : p.c0 + 1;
    p.split = HW - plane.mod;  // >= 1; < V only when the vector crosses a plane end
  } else {
    const auto row = div_c.divmod(i0);  // i0 = (n*HW + hw)*C + c
    p.c0 = row.mod;
    p.nc0 = div_hw.div(row.div) * C + p.c0;
    p.c1 = p.c0;
    p.split = V;
  }
  return p;
}

}  // namespace cuda
}  // namespace resnet_fast
