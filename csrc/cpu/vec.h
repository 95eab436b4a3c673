// Vector helpers and loop shapes shared by the kernel headers (<op>_kernel.h).
//
// Included only by kernels_generic.cpp / kernels_avx2.cpp, which choose the instruction set and
// define RESNET_FAST_ISA (the namespace that keeps the builds' symbols apart).
//
// Determinism. Every reduction is cut into pieces whose boundaries depend only on the shape
// (never on the number of threads), and partial results are merged in a fixed order, so
// results are bitwise reproducible across runs and thread counts.
#pragma once

#ifndef RESNET_FAST_ISA
#error "vec.h is included by the kernels_<isa>.cpp files only"
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "common.h"

namespace resnet_fast::cpu::RESNET_FAST_ISA {

// Accumulation ("acc") type: double for double inputs, float for float/half/bfloat16.
template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;
template <typename scalar_t>
using AccVec = at::vec::Vectorized<acc_t<scalar_t>>;

// Elements per parallel task for the elementwise loops (amortizes the task overhead).
constexpr int64_t kGrainElems = 32768;

// Loads `count` (1..size()) values of scalar_t as one acc vector; lanes past count are 0.
template <typename scalar_t>
inline AccVec<scalar_t> load(const scalar_t* p, int64_t count) {
  using Vec = AccVec<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t<scalar_t>>) {
    // The full-width branch keeps the copy size a compile-time constant.
    return count == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, count);
  } else {
    Vec out;
    if (count == Vec::size()) {
      at::vec::load_to_float(p, out);
      return out;
    }
    __at_align__ acc_t<scalar_t> tmp[Vec::size()] = {};
    for (int64_t i = 0; i < count; ++i) tmp[i] = static_cast<acc_t<scalar_t>>(p[i]);
    return Vec::loadu(tmp);
  }
}

// Stores the first `count` lanes of v into p, rounding to scalar_t (to nearest even, as
// torch's .to(dtype)).
template <typename scalar_t>
inline void store(scalar_t* p, const AccVec<scalar_t>& v, int64_t count) {
  using Vec = AccVec<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t<scalar_t>>) {
    if (count == Vec::size()) {
      v.store(p);
    } else {
      v.store(p, count);
    }
  } else if (count == Vec::size()) {
    at::vec::convert_from_float<scalar_t>(v, v).store(p, Vec::size());  // one 16-bit vector, half used
  } else {
    __at_align__ acc_t<scalar_t> tmp[Vec::size()];
    v.store(tmp);
    for (int64_t i = 0; i < count; ++i) p[i] = static_cast<scalar_t>(tmp[i]);
  }
}

// v with the lanes at and past `count` zeroed (reductions over a partial vector).
template <typename Vec>
inline Vec first_lanes(const Vec& v, int64_t count) {
  return count == Vec::size() ? v : Vec::set(Vec(0), v, count);
}

// Sum of the lanes, in double and in lane order.
template <typename T>
inline double hsum(const at::vec::Vectorized<T>& v) {
  __at_align__ T tmp[at::vec::Vectorized<T>::size()];
  v.store(tmp);
  double s = 0;
  for (int64_t i = 0; i < at::vec::Vectorized<T>::size(); ++i) s += static_cast<double>(tmp[i]);
  return s;
}

// f(i, count) for the vectors of [0, len): full ones with count == V, a compile-time constant
// once inlined (no per-vector tail branches in the hot loop), then the partial tail.
template <int64_t V, typename F>
inline void run_vectors(int64_t len, const F& f) {
  int64_t i = 0;
  for (; i + V <= len; i += V) f(i, V);
  if (i < len) f(i, len - i);
}

// acc[k] += the k-th contribution f(i, count, contrib) of every vector of [0, len), lanes past
// count discarded. Two interleaved accumulator sets keep 2K add chains in flight (one chain
// would wait out the add latency on every vector); they are combined in a fixed order.
template <int K, typename Vec, typename F>
inline void accumulate(int64_t len, const F& f, Vec (&acc)[K]) {
  constexpr int64_t V = Vec::size();
  Vec odd[K], contrib[K];
  std::fill(odd, odd + K, Vec(0));
  int64_t i = 0;
  for (; i + 2 * V <= len; i += 2 * V) {
    f(i, V, contrib);
    for (int k = 0; k < K; ++k) acc[k] = acc[k] + contrib[k];
    f(i + V, V, contrib);
    for (int k = 0; k < K; ++k) odd[k] = odd[k] + contrib[k];
  }
  for (; i + V <= len; i += V) {
    f(i, V, contrib);
    for (int k = 0; k < K; ++k) acc[k] = acc[k] + contrib[k];
  }
  if (i < len) {
    f(i, len - i, contrib);
    for (int k = 0; k < K; ++k) acc[k] = acc[k] + first_lanes(contrib[k], len - i);
  }
  for (int k = 0; k < K; ++k) acc[k] = acc[k] + odd[k];
}

// NCHW planes [begin, end) as f(p, integral_constant<G>) for planes p .. p + G - 1: G =
// kPlaneGroup where that many planes fit in kGroupElems values (16 KiB of float, L1: planes of
// <= 512 values, 7x7 and 14x14), else and for the leftovers G = 1. A reduction over a small
// plane (7x7: 49 values) moves few bytes but waits on a long dependency chain (the lane-order
// hsum in double, divisions); f runs each step for its G planes together, so their chains
// overlap (7x7 bn_stats 1.3x, bn_relu forward+backward 1.1x faster; groups of 4 at 28x28 were
// no faster). f must give each plane the same result whatever G: results then do not depend on
// where the parallel tasks, and so the groups, begin.
constexpr int64_t kGroupElems = 4096;
constexpr int kPlaneGroup = 8;

template <typename F>
inline void run_plane_groups(int64_t begin, int64_t end, int64_t hw, const F& f) {
  int64_t p = begin;
  if (kPlaneGroup * hw <= kGroupElems) {
    for (; p + kPlaneGroup <= end; p += kPlaneGroup) f(p, std::integral_constant<int, kPlaneGroup>{});
  }
  for (; p < end; ++p) f(p, std::integral_constant<int, 1>{});
}

// ----------------------------------------------------------------------------- coefficients
// Coefficient access for one vector of lanes; per-(n, c) tables are (N, C) contiguous,
// per-channel ones (C,). In an NCHW plane all lanes share (n, c): broadcast one scalar.
template <typename acc_t>
struct PlaneCoef {
  using Vec = at::vec::Vectorized<acc_t>;
  int64_t nc, c;
  Vec per_sample(const acc_t* table, int64_t /*count*/) const { return Vec(table[nc]); }
  Vec per_channel(const acc_t* table, int64_t /*count*/) const { return Vec(table[c]); }
};

// In an NHWC row the lanes are consecutive channels: load `count` entries from (nc, c) on.
template <typename acc_t>
struct RowCoef {
  int64_t nc, c;
  auto per_sample(const acc_t* table, int64_t count) const { return load(table + nc, count); }
  auto per_channel(const acc_t* table, int64_t count) const { return load(table + c, count); }
};

// ----------------------------------------------------------------------------- pre-activation
// z = y * scale[n,c] + shift[n,c] + R, R = residual * res_scale[c] + res_shift[c] | residual | 0,
// in acc precision and in the reference's order of operations. No fused multiply-add (the
// x86-64 baseline has none and the AVX2 build leaves FMA off), so results round exactly like
// torch's elementwise ops; a compiler that contracts a * b + c (aarch64) rounds once less.
template <typename scalar_t>
struct PreActivation {
  using acc = acc_t<scalar_t>;
  using Vec = AccVec<scalar_t>;
  const scalar_t* y;
  const scalar_t* residual;  // nullptr: no residual
  const acc* scale;
  const acc* shift;
  const acc* res_scale;      // nullptr: plain residual
  const acc* res_shift;
  bool relu;

  explicit PreActivation(const PreActArgs& a)
      : y(a.y.const_data_ptr<scalar_t>()),
        residual(data_or_null<scalar_t>(a.residual)),
        scale(a.scale.const_data_ptr<acc>()),
        shift(a.shift.const_data_ptr<acc>()),
        res_scale(data_or_null<acc>(a.res_scale)),
        res_shift(data_or_null<acc>(a.res_shift)),
        relu(a.relu) {}

  Vec load_residual(int64_t offset, int64_t count) const {
    return residual != nullptr ? load(residual + offset, count) : Vec(0);
  }

  // z from the loaded y and residual vectors (rv is ignored without a residual).
  template <typename Coef>
  Vec z(const Vec& yv, const Vec& rv, const Coef& k, int64_t count) const {
    Vec out = yv * k.per_sample(scale, count) + k.per_sample(shift, count);
    if (residual != nullptr) {
      out = out + (res_scale != nullptr ? rv * k.per_channel(res_scale, count) + k.per_channel(res_shift, count)
                                        : rv);
    }
    return out;
  }

  // g = (z <= 0 ? 0 : grad) with relu, else grad: eager's relu backward (threshold_backward), so a NaN z
  // passes the gradient.
  template <typename Coef>
  Vec masked_grad(const Vec& gv, const Vec& yv, const Vec& rv, const Coef& k, int64_t count) const {
    if (!relu) return gv;
    const Vec zero(0);
    return Vec::blendv(gv, zero, z(yv, rv, k, count) <= zero);
  }
};

// ----------------------------------------------------------------------------- loop shapes
// Elementwise loop: f(offset, count, coef) for every vector of up to V lanes of an activation
// (offset: the element index shared by y, residual, grad_out and the outputs, which have one
// layout), in parallel. NCHW: tasks are runs of planes; NHWC: runs of rows.
// f and the sizes are copied into locals of each task: the vector stores may alias anything,
// so values read through a reference would be reloaded on every vector.
template <typename acc_t, typename F>
void for_each_vector(const Geometry& g, const F& f) {
  constexpr int64_t V = at::vec::Vectorized<acc_t>::size();
  if (!g.channels_last) {
    at::parallel_for(0, g.N * g.C, std::max<int64_t>(1, kGrainElems / g.HW), [&](int64_t begin, int64_t end) {
      const F body = f;
      const int64_t C = g.C, HW = g.HW;
      for (int64_t p = begin; p < end; ++p) {
        const PlaneCoef<acc_t> coef{p, p % C};
        run_vectors<V>(HW, [&](int64_t i, int64_t count) { body(p * HW + i, count, coef); });
      }
    });
  } else {
    at::parallel_for(0, g.N * g.HW, std::max<int64_t>(1, kGrainElems / g.C), [&](int64_t begin, int64_t end) {
      const F body = f;
      const int64_t C = g.C, HW = g.HW;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t nc0 = (row / HW) * C;
        run_vectors<V>(C, [&](int64_t c, int64_t count) { body(row * C + c, count, RowCoef<acc_t>{nc0 + c, c}); });
      }
    });
  }
}

// NHWC reductions: each sample's HW rows are cut into blocks of rows_per_block rows (a
// function of the shape only); blocks run in parallel, each writes its own partial results,
// and the caller merges a sample's blocks in order.
struct RowBlocks {
  int64_t HW, rows_per_block, per_sample, total;

  // Blocks of about target_elems values, at least min_rows rows (keeps the per-block partial
  // buffers small next to the data) and at most max_rows (bounds the terms per acc lane).
  RowBlocks(const Geometry& g, int64_t target_elems, int64_t min_rows, int64_t max_rows)
      : HW(g.HW),
        rows_per_block(std::min({g.HW, max_rows, std::max(min_rows, (target_elems + g.C - 1) / g.C)})),
        per_sample((g.HW + rows_per_block - 1) / rows_per_block),
        total(g.N * per_sample) {}

  // f(block, n, first_row, end_row) with global row indices (row = n * HW + hw).
  template <typename F>
  void parallel(const F& f) const {
    at::parallel_for(0, total, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t n = b / per_sample;
        const int64_t r0 = n * HW + (b % per_sample) * rows_per_block;
        f(b, n, r0, std::min(r0 + rows_per_block, (n + 1) * HW));
      }
    });
  }

  int64_t rows_in(int64_t j) const { return std::min(rows_per_block, HW - j * rows_per_block); }
};

// No register tiling across rows. Keeping a channel vector's running sums (or an elementwise
// pass's coefficients) in registers over tiles of 8 NHWC rows made each kernel alone faster at
// C >= 1024 when its data sat in cache (7x7 bn_stats 80 -> 65 us), but forward+backward loops
// of bn_relu / bn_add_relu at 7x7 and 14x14 10-40 % slower: a tile reads 8 rows of every
// tensor at once, 16-32 concurrent streams, more than the prefetchers follow.

// Sum over (h, w) of K quantities: out[k][n * C + c] = sum_hw contribution_k.
// f(offset, count, coef, Vec (&contrib)[K]) writes one vector's K contributions (lanes past
// count are discarded here). Partial sums are acc vectors over at most kSumChunk values
// (NCHW) or one block of at most 512 rows (NHWC), merged in double in a fixed order.
template <typename acc_t, int K, typename F>
void sum_over_hw(const Geometry& g, double* out, const F& f) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  constexpr int64_t kSumChunk = 4096;
  const int64_t NC = g.N * g.C;
  if (!g.channels_last) {
    at::parallel_for(0, NC, std::max<int64_t>(1, kGrainElems / g.HW), [&](int64_t begin, int64_t end) {
      const F body = f;  // locals: see for_each_vector
      const int64_t C = g.C, HW = g.HW;
      // Planes p .. p + G - 1, chunk by chunk, each chunk's steps for the G planes together.
      const auto planes = [&](int64_t p, auto size) {
        constexpr int G = decltype(size)::value;
        double total[G][K] = {};
        for (int64_t i0 = 0; i0 < HW; i0 += kSumChunk) {
          Vec acc[G][K];
          for (int j = 0; j < G; ++j) {
            std::fill(acc[j], acc[j] + K, Vec(0));  // (the AVX Vectorized constructor leaves lanes undefined)
            const PlaneCoef<acc_t> coef{p + j, (p + j) % C};
            const int64_t base = (p + j) * HW + i0;
            accumulate(std::min(kSumChunk, HW - i0), [&](int64_t i, int64_t count, Vec(&contrib)[K]) {
              body(base + i, count, coef, contrib);
            }, acc[j]);
          }
          for (int j = 0; j < G; ++j) {
            for (int k = 0; k < K; ++k) total[j][k] += hsum(acc[j][k]);
          }
        }
        for (int j = 0; j < G; ++j) {
          for (int k = 0; k < K; ++k) out[k * NC + p + j] = total[j][k];
        }
      };
      run_plane_groups(begin, end, HW, planes);
    });
    return;
  }
  const RowBlocks blocks(g, /*target_elems=*/65536, /*min_rows=*/32, /*max_rows=*/512);
  std::vector<double> partial(blocks.total * K * g.C);  // (block, K, C)
  blocks.parallel([&](int64_t b, int64_t n, int64_t r0, int64_t r1) {
    const F body = f;
    const int64_t C = g.C;
    std::vector<acc_t> acc(K * C, acc_t(0));  // (K, C) running sums of this block
    acc_t* a = acc.data();
    Vec contrib[K];
    for (int64_t row = r0; row < r1; ++row) {
      run_vectors<V>(C, [&](int64_t c, int64_t count) {
        body(row * C + c, count, RowCoef<acc_t>{n * C + c, c}, contrib);
        for (int k = 0; k < K; ++k) {
          store(a + k * C + c, load(a + k * C + c, count) + contrib[k], count);  // only count lanes written
        }
      });
    }
    std::copy(acc.begin(), acc.end(), partial.begin() + b * K * g.C);
  });
  at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int k = 0; k < K; ++k) {
        double* o = out + k * NC + n * g.C;
        std::fill(o, o + g.C, 0.0);
        for (int64_t b = n * blocks.per_sample; b < (n + 1) * blocks.per_sample; ++b) {
          const double* src = partial.data() + (b * K + k) * g.C;
          for (int64_t c = 0; c < g.C; ++c) o[c] += src[c];
        }
      }
    }
  });
}

}  // namespace resnet_fast::cpu::RESNET_FAST_ISA
