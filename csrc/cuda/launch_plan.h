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

inline int64_t pow2_ceil(int64_t x) {
  int64_t p = 1;
  while (p < x) p <<= 1;
  return p;
}

RF_HD uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }

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
  bool vec;    // V = vec_width when true, 1 otherwise
  int S;       // segments per plane (NCHW) or per sample's rows (NHWC)
  int L;       // segment length in hw positions (NCHW: a multiple of V)
  int G;       // NCHW: lanes per unit; NHWC: TX, channel vectors per block (power of two <= 32)
  int cvecs;   // NHWC: channel vectors per row, C / V
  int ctiles;  // NHWC: blocks across the channels, ceil(cvecs / TX); must be <= 65535
};

// Work split of a per-(n, c) reduction. Enough units to fill every SM (a wave of warps at
// full occupancy for NCHW, 8 blocks per SM for NHWC), splitting planes into segments only
// when the batch alone does not, and never below two batches of loads per thread.
// `vec`: the 16-byte width of the dtype; `unroll`, `row_unroll`: the Op's kUnroll and
// kRowUnroll; `aligned`: every pointer the Op dereferences is 16-byte aligned; `sms`: the
// device's multiprocessor count. S therefore depends on N, C, HW, the SM count and the
// alignment, and so does the summation order (csrc/cuda/NOTES.md, "Reproducibility").
inline ReducePlan plan_reduce(const ActivationInfo& info, int vec, int unroll, int row_unroll, bool aligned, int sms) {
  ReducePlan p{};
  p.layout = info.layout;
  const int64_t N = info.N, C = info.C, HW = info.HW;
  int64_t S = 1;
  if (info.layout == Layout::NCHW) {
    p.vec = aligned && vec > 1 && HW % vec == 0;  // then every plane starts 16-byte aligned
    const int64_t V = p.vec ? vec : 1;
    p.G = static_cast<int>(std::clamp<int64_t>(pow2_ceil(ceil_div(HW, 2 * unroll * V)), 1, kWarpSize));
    const int64_t warps = ceil_div(N * C, kWarpSize / p.G);
    const int64_t target = static_cast<int64_t>(sms) * 64;
    if (warps < target) S = std::min(ceil_div(target, warps), std::max<int64_t>(1, HW / (p.G * V * unroll * 2)));
    const int64_t L = ceil_div(ceil_div(HW, S), V) * V;
    p.L = static_cast<int>(L);
    p.S = static_cast<int>(ceil_div(HW, L));
    return p;
  }
  p.vec = aligned && vec > 1 && C % vec == 0;  // then every row starts 16-byte aligned
  const int64_t V = p.vec ? vec : 1;
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

// What the stage-1 kernels read (a chunk of samples).
struct ReduceGrid {
  int C, HW;
  int S, L, G;
  int cvecs;  // NHWC
  int units;  // NCHW: planes * S in this chunk
};

// The stage-1 launch of one chunk of n_chunk samples: its grid (x, y) and what it reads.
struct ReduceLaunch {
  ReduceGrid g;
  int64_t blocks_x, blocks_y;
};

inline ReduceLaunch reduce_launch(const ReducePlan& plan, const ActivationInfo& info, int64_t n_chunk) {
  ReduceLaunch l{{static_cast<int>(info.C), static_cast<int>(info.HW), plan.S, plan.L, plan.G, plan.cvecs, 0}, 0, 1};
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
  const int unit = bx * (kThreads / g.G) + tid / g.G;
  u.active = unit < g.units;
  if (u.active) {
    u.nc = unit / g.S;
    u.s = unit - u.nc * g.S;
    u.n = u.nc / g.C;
    u.c = u.nc - u.n * g.C;
  }
  return u;
}

// The batches lane u.lane loads from its unit: f(off, k) with off[0..U) the chunk offsets of
// U packs of V elements, k (>= 1) of them inside the segment (a prefix). Lanes are
// V-strided, so a group's accesses are contiguous.
template <int V, int U, class F>
RF_HD void nchw_batches(const ReduceGrid& g, const NchwUnit& u, F&& f) {
  const uint32_t base = static_cast<uint32_t>(u.nc) * g.HW;  // plane start; < chunk numel
  const uint32_t a = static_cast<uint32_t>(u.s) * g.L;
  const uint32_t b = min_u32(a + g.L, static_cast<uint32_t>(g.HW));
  const uint32_t step = static_cast<uint32_t>(g.G) * V;
  for (uint32_t e = a + u.lane * V; e < b; e += step * U) {
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
  t.TY = kThreads / t.TX;
  t.tx = tid & (t.TX - 1);
  t.ty = tid / t.TX;
  t.cv = by * t.TX + t.tx;
  t.active = t.cv < g.cvecs;
  t.n = bx / g.S;
  t.s = bx - t.n * g.S;
  return t;
}

// The batches of rows thread t loads: f(off, k) with off[0..U) the chunk offsets of U rows'
// V channels, k (>= 1) of them inside the segment (a prefix).
template <int V, int U, class F>
RF_HD void nhwc_batches(const ReduceGrid& g, const NhwcThread& t, F&& f) {
  const uint32_t r0 = static_cast<uint32_t>(t.s) * g.L;
  const uint32_t r1 = min_u32(r0 + g.L, static_cast<uint32_t>(g.HW));
  const uint32_t row_base = static_cast<uint32_t>(t.n) * g.HW;  // sample's first row
  for (uint32_t r = r0 + t.ty; r < r1; r += static_cast<uint32_t>(t.TY) * U) {
    uint32_t off[U];
    int k = 0;
#pragma unroll
    for (int i = 0; i < U; ++i) {
      const uint32_t ri = r + i * t.TY;
      off[i] = (row_base + ri) * g.C + t.cv * V;  // wraps harmlessly past the end: not loaded
      k += ri < r1;
    }
    f(off, k);
  }
}

// The first of the V partials thread t (ty == 0) writes: (n, s, cv*V + j) for j < V.
RF_HD int nhwc_partial(const ReduceGrid& g, const NhwcThread& t, int V) { return (t.n * g.S + t.s) * g.C + t.cv * V; }

// ----------------------------------------------------------------------------- elementwise
// Whether 16-byte vectors of V elements apply to a layout (pointer alignment aside): in
// NCHW a vector may straddle two planes (needs HW >= V), in NHWC it must not leave a row.
inline bool elementwise_vec_shape_ok(const ActivationInfo& info, int V) {
  return info.layout == Layout::NCHW ? info.HW >= V : info.C % V == 0;
}

// Grid of the elementwise kernels: enough blocks for the vectors, at most 16 per SM (the
// grid-stride loop does the rest).
inline unsigned elementwise_blocks(int64_t numel, int vec, int sms) {
  const int64_t blocks = ceil_div(numel / vec, kThreads);
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, static_cast<int64_t>(sms) * 16));
}

// The elements thread `first` (blockIdx.x * kThreads + threadIdx.x) of a grid of `stride`
// threads processes: f(i0, integral_constant<int, V>) per vector of V elements [i0, i0 + V)
// in a grid-stride loop, then f(i, integral_constant<int, 1>) for one of the last numel % V.
template <int V, class F>
RF_HD void elementwise_thread(uint32_t numel, uint32_t first, uint32_t stride, F&& f) {
  const uint32_t nvec = numel / V;
  for (uint32_t v = first; v < nvec; v += stride) f(v * V, std::integral_constant<int, V>{});
  if constexpr (V > 1) {
    const uint32_t i = nvec * V + first;
    if (i < numel) f(i, std::integral_constant<int, 1>{});
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
