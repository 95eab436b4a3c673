// bn_stats kernel: per-(n, c) moments of y in one pass over memory (op: bn_stats.cpp).
//
// Shifted sums (corrected two-pass algorithm, Chan/Golub/LeVeque): with a shift s near the
// mean, sums of d = x - s and d^2 give
//     mean = s + sum(d) / n,   M2 = sum(d^2) - sum(d)^2 / n,
// which stays accurate when |mean| >> std (1000 + 1e-3 * randn), unlike a sum of squares.
// NCHW: a plane is cut into chunks of at most kChunkElems values (16 KiB of float, in L1),
// each read twice, the second time from cache, so y crosses the memory bus once: pass 1
// sums the chunk for its shift, pass 2 the shifted sums; chunk moments merge into per-(n, c)
// moments with Chan's formula, in double, in order. NHWC: see block_moments.
//
// Loop shapes. NCHW: tasks are runs of (n, c) planes, vectorized along HW, a plane's chunks
// in order (planes of <= 512 values eight at a time: run_plane_groups).
// NHWC: fixed blocks of >= 64 rows run in parallel, vectorized along C, with one
// shift per channel for the whole block (its first rows' mean) in place of the chunks
// (block_moments); a sample's blocks are merged in order afterwards.
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

// (mean, M2) of G NCHW planes of hw contiguous values each, from x on, into mean[0..G),
// m2[0..G): chunk by chunk, each step of a chunk for the G planes together (run_plane_groups
// passes G = 8 for small planes, whose dependency chains then overlap, else G = 1); every
// plane gets the same operations whatever G.
template <int G, typename scalar_t>
void plane_moments(const scalar_t* x, int64_t hw, double* mean, double* m2) {
  using Vec = AccVec<scalar_t>;
  std::fill(mean, mean + G, 0.0);
  std::fill(m2, m2 + G, 0.0);
  double count = 0;
  for (int64_t i0 = 0; i0 < hw; i0 += kChunkElems) {
    const int64_t len = std::min(kChunkElems, hw - i0);
    Vec sum[G][1], d[G][2];  // d: sum(x - shift), sum((x - shift)^2); pass 2 reads from L1
    acc_t<scalar_t> shift[G];
    for (int j = 0; j < G; ++j) {
      const scalar_t* chunk = x + j * hw + i0;
      sum[j][0] = Vec(0);
      accumulate(len, [&](int64_t i, int64_t n, Vec(&out)[1]) { out[0] = load(chunk + i, n); }, sum[j]);
    }
    for (int j = 0; j < G; ++j) shift[j] = static_cast<acc_t<scalar_t>>(hsum(sum[j][0]) / len);
    for (int j = 0; j < G; ++j) {
      const scalar_t* chunk = x + j * hw + i0;
      const Vec shift_v(shift[j]);
      d[j][0] = d[j][1] = Vec(0);
      accumulate(len, [&](int64_t i, int64_t n, Vec(&out)[2]) {
        out[0] = load(chunk + i, n) - shift_v;
        out[1] = out[0] * out[0];
      }, d[j]);
    }
    for (int j = 0; j < G; ++j) merge_chunk(count, mean[j], m2[j], len, shift[j], hsum(d[j][0]), hsum(d[j][1]));
    count += len;
  }
}

// NHWC: moments of rows [r0, r1) (C channels each) into mean[C], m2[C].
// One shift per channel for the whole block: the mean of its first rows (up to kChunkElems
// values, re-read from cache below). Then one row-major pass (memory read in order) adds
// d = x - shift and d^2 into per-channel acc sums (3 * C values, in L1), which go into double
// every kFlushRows rows (at most that many acc terms per lane), and one merge per block: with
// wide C a chunk is a row or two, and a Chan merge per chunk cost more than the pass itself.
template <typename scalar_t>
void block_moments(const scalar_t* y, int64_t C, int64_t r0, int64_t r1, double* mean, double* m2) {
  using Vec = AccVec<scalar_t>;
  using acc = acc_t<scalar_t>;
  constexpr int64_t V = Vec::size();
  constexpr int64_t kFlushRows = 256;
  const int64_t shift_rows = std::max<int64_t>(1, kChunkElems / C);
  std::vector<acc> buffers(3 * C, acc(0));  // per-channel shift and running sums, in L1
  acc* shift = buffers.data();  // raw pointers: the vector stores may alias anything else
  acc* s1 = shift + C;
  acc* s2 = s1 + C;
  std::vector<double> sums(2 * C, 0.0);  // sum d, sum d^2 in double
  const int64_t first_end = std::min(r1, r0 + shift_rows);
  for (int64_t row = r0; row < first_end; ++row) {
    run_vectors<V>(C, [&](int64_t c, int64_t n) { store(shift + c, load(shift + c, n) + load(y + row * C + c, n), n); });
  }
  const acc first_len = static_cast<acc>(first_end - r0);
  for (int64_t c = 0; c < C; ++c) shift[c] /= first_len;
  for (int64_t f0 = r0; f0 < r1; f0 += kFlushRows) {
    const int64_t f1 = std::min(r1, f0 + kFlushRows);
    std::fill(s1, s1 + 2 * C, acc(0));
    for (int64_t row = f0; row < f1; ++row) {  // row-major: memory is read in order
      const scalar_t* x = y + row * C;
      run_vectors<V>(C, [&](int64_t c, int64_t n) {
        const Vec d = load(x + c, n) - load(shift + c, n);
        store(s1 + c, load(s1 + c, n) + d, n);
        store(s2 + c, load(s2 + c, n) + d * d, n);
      });
    }
    for (int64_t c = 0; c < C; ++c) {
      sums[c] += s1[c];
      sums[C + c] += s2[c];
    }
  }
  const double len = static_cast<double>(r1 - r0);
  for (int64_t c = 0; c < C; ++c) {
    mean[c] = shift[c] + sums[c] / len;
    m2[c] = std::max(0.0, sums[C + c] - sums[c] * sums[c] / len);
  }
}

template <typename scalar_t>
void sample_moments(const Geometry& g, const scalar_t* y, double* mean_nc, double* m2_nc) {
  if (!g.channels_last) {
    at::parallel_for(0, g.N * g.C, std::max<int64_t>(1, kGrainElems / g.HW), [&](int64_t begin, int64_t end) {
      run_plane_groups(begin, end, g.HW, [&](int64_t p, auto size) {
        plane_moments<decltype(size)::value>(y + p * g.HW, g.HW, mean_nc + p, m2_nc + p);
      });
    });
    return;
  }
  // (Any number of rows: acc sums take at most kFlushRows terms per lane before going into double.)
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
      const double* first = partial.data() + n * blocks.per_sample * 2 * g.C;
      std::copy(first, first + g.C, mean);  // (a merge into nothing, without its divisions)
      std::copy(first + g.C, first + 2 * g.C, m2);
      double count = static_cast<double>(blocks.rows_in(0));
      for (int64_t j = 1; j < blocks.per_sample; ++j) {
        const double len = static_cast<double>(blocks.rows_in(j));
        const double* src = first + j * 2 * g.C;
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
