// bn_stats kernel: per-(n, c) moments of y in one pass over memory (op: bn_stats.cpp).
//
// y is cut into chunks of at most kChunkElems values (16 KiB of float: they stay in L1).
// Each chunk is read twice, the second time from cache, so y crosses the memory bus once:
// pass 1 sums it for a shift s (the chunk's rough mean); pass 2 sums d = x - s and d^2, and
// (corrected two-pass algorithm, Chan/Golub/LeVeque)
//     chunk mean = s + sum(d) / n,   chunk M2 = sum(d^2) - sum(d)^2 / n,
// which stays accurate when |mean| >> std (1000 + 1e-3 * randn), unlike a sum of squares.
// Chunk moments merge into per-(n, c) moments with Chan's formula, in double, in order.
//
// Loop shapes. NCHW: tasks are runs of (n, c) planes, vectorized along HW, a plane's chunks
// in order. NHWC: fixed blocks of >= 64 rows run in parallel, vectorized along C; a chunk's
// pass 1 adds its rows into per-channel sums (a small L1 array), pass 2 walks the cached
// chunk one channel vector at a time with the sums in registers; a sample's blocks are
// merged in order afterwards.
// Bytes: y read once; NHWC also writes and reads back 2 doubles per channel per block
// (<= 1/16 of a float y).
#pragma once

#include "vec.h"

namespace resnet_fast::cpu::RESNET_FAST_ISA {

constexpr int64_t kChunkElems = 4096;

// Merges the moments (nb, mean_b, m2_b) into (na, mean_a, m2_a) (Chan et al.); the caller
// advances na (all channels of an NHWC block share it).
inline void chan_merge(double na, double& mean_a, double& m2_a, double nb, double mean_b, double m2_b) {
  const double n = na + nb;
  const double delta = mean_b - mean_a;
  mean_a += delta * (nb / n);
  m2_a += m2_b + delta * delta * (na * nb / n);
}

// Merges a chunk of len values, given its shift and the sums of (x - shift) and (x - shift)^2.
inline void merge_chunk(double count, double& mean, double& m2, double len, double shift, double s1, double s2) {
  chan_merge(count, mean, m2, len, shift + s1 / len, std::max(0.0, s2 - s1 * s1 / len));
}

// (mean, M2) of one NCHW plane of hw contiguous values.
template <typename scalar_t>
std::pair<double, double> plane_moments(const scalar_t* x, int64_t hw) {
  using Vec = AccVec<scalar_t>;
  double count = 0, mean = 0, m2 = 0;
  for (int64_t i0 = 0; i0 < hw; i0 += kChunkElems) {
    const int64_t len = std::min(kChunkElems, hw - i0);
    const scalar_t* chunk = x + i0;
    Vec sum[1] = {Vec(0)};
    accumulate(len, [&](int64_t i, int64_t n, Vec(&out)[1]) { out[0] = load(chunk + i, n); }, sum);
    const acc_t<scalar_t> shift = static_cast<acc_t<scalar_t>>(hsum(sum[0]) / len);
    const Vec shift_v(shift);
    Vec d[2] = {Vec(0), Vec(0)};  // sum(x - shift), sum((x - shift)^2); pass 2 reads from L1
    accumulate(len, [&](int64_t i, int64_t n, Vec(&out)[2]) {
      out[0] = load(chunk + i, n) - shift_v;
      out[1] = out[0] * out[0];
    }, d);
    merge_chunk(count, mean, m2, len, shift, hsum(d[0]), hsum(d[1]));
    count += len;
  }
  return {mean, m2};
}

// NHWC: moments of rows [r0, r1) (C channels each) into mean[C], m2[C].
template <typename scalar_t>
void block_moments(const scalar_t* y, int64_t C, int64_t r0, int64_t r1, double* mean, double* m2) {
  using Vec = AccVec<scalar_t>;
  using acc = acc_t<scalar_t>;
  constexpr int64_t V = Vec::size();
  const int64_t rows_per_chunk = std::max<int64_t>(1, kChunkElems / C);
  std::vector<acc> buffers(3 * C);  // per-channel shift and running sums, in L1
  acc* shift = buffers.data();  // raw pointers: the vector stores may alias anything else
  acc* s1 = shift + C;
  acc* s2 = s1 + C;
  std::fill(mean, mean + C, 0.0);
  std::fill(m2, m2 + C, 0.0);
  double count = 0;
  for (int64_t q0 = r0; q0 < r1; q0 += rows_per_chunk) {
    const int64_t q1 = std::min(r1, q0 + rows_per_chunk);
    const acc len = static_cast<acc>(q1 - q0);
    // Pass 1: per-channel sums -> shift.
    std::fill(s1, s1 + C, acc(0));
    for (int64_t row = q0; row < q1; ++row) {
      run_vectors<V>(C, [&](int64_t c, int64_t n) { store(s1 + c, load(s1 + c, n) + load(y + row * C + c, n), n); });
    }
    for (int64_t c = 0; c < C; ++c) shift[c] = s1[c] / len;
    // Pass 2, from cache: centered sums, channel vector by channel vector (the chunk is in
    // L1 now, so the order is free and the sums can stay in registers).
    run_vectors<V>(C, [&](int64_t c, int64_t n) {
      const Vec sh = load(shift + c, n);
      Vec d1(0), d2(0);
      for (int64_t row = q0; row < q1; ++row) {
        const Vec d = load(y + row * C + c, n) - sh;
        d1 = d1 + d;
        d2 = d2 + d * d;
      }
      store(s1 + c, d1, n);
      store(s2 + c, d2, n);
    });
    for (int64_t c = 0; c < C; ++c) merge_chunk(count, mean[c], m2[c], len, shift[c], s1[c], s2[c]);
    count += len;
  }
}

template <typename scalar_t>
void sample_moments(const Geometry& g, const scalar_t* y, double* mean_nc, double* m2_nc) {
  if (!g.channels_last) {
    at::parallel_for(0, g.N * g.C, std::max<int64_t>(1, kGrainElems / g.HW), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) std::tie(mean_nc[p], m2_nc[p]) = plane_moments(y + p * g.HW, g.HW);
    });
    return;
  }
  // (Any number of rows: accuracy comes from the chunks, which have at most kChunkElems values.)
  const RowBlocks blocks(g, /*target_elems=*/65536, /*min_rows=*/64, /*max_rows=*/g.HW);
  std::vector<double> partial(blocks.total * 2 * g.C);  // (block, {mean, m2}, C)
  blocks.parallel([&](int64_t b, int64_t /*n*/, int64_t r0, int64_t r1) {
    double* out = partial.data() + b * 2 * g.C;
    block_moments(y, g.C, r0, r1, out, out + g.C);
  });
  at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      double* mean = mean_nc + n * g.C;
      double* m2 = m2_nc + n * g.C;
      std::fill(mean, mean + g.C, 0.0);
      std::fill(m2, m2 + g.C, 0.0);
      double count = 0;
      for (int64_t j = 0; j < blocks.per_sample; ++j) {
        const double len = static_cast<double>(blocks.rows_in(j));
        const double* src = partial.data() + (n * blocks.per_sample + j) * 2 * g.C;
        for (int64_t c = 0; c < g.C; ++c) chan_merge(count, mean[c], m2[c], len, src[c], src[g.C + c]);
        count += len;
      }
    }
  });
}

inline void bn_stats_kernel(const Geometry& g, const Tensor& y, double* mean_nc, double* m2_nc) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "resnet_fast::bn_stats", [&] {
    sample_moments(g, y.const_data_ptr<scalar_t>(), mean_nc, m2_nc);
  });
}

}  // namespace resnet_fast::cpu::RESNET_FAST_ISA
