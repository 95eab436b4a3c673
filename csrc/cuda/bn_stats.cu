// resnet_fast::bn_stats on CUDA: per-channel mean and biased variance over (N, H, W) and
// the per-sample means over (H, W), in one read of y.
//
// Stage 1 (reduce.cuh, BnStatsOp): shifted sums. Every thread reading a segment uses one
//   shift K per channel, taken from the segment's first values (NCHW: the mean of its first
//   pack of V values, loaded by every lane of the unit; NHWC: the mean of its first 4 rows),
//   and adds
//   d = y - K and d*d: per batch of U packs / rows into batch sums, then into the thread's
//   sums. Lanes (xor shuffles) and rows (shared-memory tree) merge by plain addition, since
//   they share K and the segment's count is known from the plan; one division per segment
//   turns the sums into (mean, M2) = (K + s/n, q - s*s/n) for the workspace. The error of M2
//   is that of the sums times 1 + (mean - K)^2/var: K from the segment itself keeps that
//   factor O(1) for data near the mean (a shift far from the mean, e.g. an outlier as the
//   first value, costs accuracy, never correctness of the formula).
// Stage 2 (_bn_stats_finalize_kernel): per channel, the S segments of each sample merge with
//   Chan's formula into the sample's (mean, M2) -> sample_mean[n, c] (P lanes per sample
//   when N is small: launch_plan.h "stage 2"); the samples merge per thread and then in a
//   fixed shared-memory tree -> mean[c], var[c] = M2 / (N*H*W).
#include "common.cuh"
#include "reduce.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

namespace resnet_fast {
namespace cuda {
namespace {

// a[0] + ... + a[U-1] pairwise (U a power of two).
template <int U, typename acc_t>
__device__ __forceinline__ acc_t pairwise_sum(acc_t (&a)[U]) {
#pragma unroll
  for (int w = U / 2; w > 0; w /= 2) {
#pragma unroll
    for (int u = 0; u < w; ++u) a[u] += a[u + w];
  }
  return a[0];
}

// (mean, M2) of count values from their shifted sums s = sum (y - K), q = sum (y - K)^2.
// M2 < 0 (rounding, when var << (mean - K)^2) is clamped to 0; NaN stays NaN.
template <typename acc_t>
__device__ __forceinline__ void shifted_moments(acc_t K, acc_t s, acc_t q, int count, acc_t& mean, acc_t& m2) {
  const acc_t m = s / static_cast<acc_t>(count);
  mean = K + m;
  const acc_t r = q - s * m;
  m2 = r < acc_t(0) ? acc_t(0) : r;
}

template <typename scalar_t, int V>
struct BnStatsOp {
  using scalar_type = scalar_t;
  using acc_t = acc_type<scalar_t>;
  static constexpr int kVec = V;
  static constexpr int kUnroll = 4;
  static constexpr int kRowUnroll = 4;
  struct PlaneState {  // shifted sums of one lane
    acc_t s, q;
  };
  struct RowState {  // shifted sums of V channels
    acc_t s[V], q[V];
  };
  struct PlaneContext {  // the unit's shift
    acc_t K;
  };
  struct RowContext {  // the shifts of the thread's V channels
    acc_t K[V];
  };

  const scalar_t* __restrict__ y;  // (N, C, H, W), this chunk
  acc_t* __restrict__ part_mean;   // (N, S, C) segment means, this chunk
  acc_t* __restrict__ part_m2;     // (N, S, C) segment M2

  // K = mean of the segment's first pack (a segment starts on a pack: L % V == 0).
  __device__ __forceinline__ PlaneContext plane_context(int, int, int, uint32_t first) const {
    acc_t x[V];
    load_acc<V>(y + first, x);
    return {pairwise_sum<V>(x) * (acc_t(1) / acc_t(V))};  // 1/V: a power of two, exact
  }
  // K[j] = the mean of channel j's values in the segment's first kShiftRows rows (a segment
  // of fewer rows repeats its last): one row alone could be an outlier (an image corner),
  // and M2's error grows with (mean - K)^2.
  static constexpr int kShiftRows = 4;
  __device__ __forceinline__ RowContext row_context(int, int, int, uint32_t first, uint32_t row_stride,
                                                    int rows) const {
    RowContext ctx;
    load_acc<V>(y + first, ctx.K);
#pragma unroll
    for (int i = 1; i < kShiftRows; ++i) {
      acc_t x[V];
      load_acc<V>(y + first + static_cast<uint32_t>(i < rows ? i : rows - 1) * row_stride, x);
#pragma unroll
      for (int j = 0; j < V; ++j) ctx.K[j] += x[j];
    }
#pragma unroll
    for (int j = 0; j < V; ++j) ctx.K[j] *= acc_t(1) / acc_t(kShiftRows);
    return ctx;
  }

  // k (>= 1) packs of V values of one plane at off[0..k); k == kUnroll in the hot loop.
  __device__ __forceinline__ void accumulate_plane(PlaneState& st, const PlaneContext& ctx,
                                                   const uint32_t (&off)[kUnroll], int k) const {
    Pack<scalar_t, V> x[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (u < k) x[u] = load_pack<V>(y + off[u]);
    }
    acc_t ps[kUnroll], pq[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      ps[u] = pq[u] = acc_t(0);
      if (u < k) {
        const acc_t d0 = static_cast<acc_t>(x[u].v[0]) - ctx.K;
        ps[u] = d0;
        pq[u] = d0 * d0;
#pragma unroll
        for (int j = 1; j < V; ++j) {
          const acc_t d = static_cast<acc_t>(x[u].v[j]) - ctx.K;
          ps[u] += d;
          pq[u] += d * d;
        }
      }
    }
    st.s += pairwise_sum<kUnroll>(ps);
    st.q += pairwise_sum<kUnroll>(pq);
  }

  // k (>= 1) rows of V channels at off[0..k); k == kRowUnroll in the hot loop.
  __device__ __forceinline__ void accumulate_rows(RowState& st, const RowContext& ctx,
                                                  const uint32_t (&off)[kRowUnroll], int k) const {
    Pack<scalar_t, V> x[kRowUnroll];
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      if (u < k) x[u] = load_pack<V>(y + off[u]);
    }
#pragma unroll
    for (int j = 0; j < V; ++j) {
      acc_t ps[kRowUnroll], pq[kRowUnroll];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        const acc_t d = u < k ? static_cast<acc_t>(x[u].v[j]) - ctx.K[j] : acc_t(0);
        ps[u] = d;
        pq[u] = d * d;
      }
      st.s[j] += pairwise_sum<kRowUnroll>(ps);
      st.q[j] += pairwise_sum<kRowUnroll>(pq);
    }
  }

  __device__ __forceinline__ static void combine(PlaneState& a, const PlaneState& b) {
    a.s += b.s;
    a.q += b.q;
  }

  __device__ __forceinline__ static void combine(RowState& a, const RowState& b) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      a.s[j] += b.s[j];
      a.q[j] += b.q[j];
    }
  }

  __device__ __forceinline__ static PlaneState shfl_xor(const PlaneState& st, int offset) {
    return {__shfl_xor_sync(0xffffffffu, st.s, offset), __shfl_xor_sync(0xffffffffu, st.q, offset)};
  }

  // count: the segment's values (per channel).
  __device__ __forceinline__ void store_plane(const PlaneState& st, const PlaneContext& ctx, int p, int count) const {
    shifted_moments(ctx.K, st.s, st.q, count, part_mean[p], part_m2[p]);
  }

  __device__ __forceinline__ void store_rows(const RowState& st, const RowContext& ctx, int p, int count) const {
#pragma unroll
    for (int j = 0; j < V; ++j) shifted_moments(ctx.K[j], st.s[j], st.q[j], count, part_mean[p + j], part_m2[p + j]);
  }
};

// Block: 32 channels x 32 rows; a pass gives each sample of 32 / P a group of P rows (P > 1
// only when N < 32: launch_plan.h "stage 2"). Segment s of a plane holds min(L, HW - s*L)
// values.
template <typename acc_t>
__global__ void __launch_bounds__(kFinalizeThreads)
    _bn_stats_finalize_kernel(const acc_t* __restrict__ part_mean,  // (N, S, C) segment means
                              const acc_t* __restrict__ part_m2,    // (N, S, C) segment M2
                              acc_t* __restrict__ mean,             // (C,) out
                              acc_t* __restrict__ var,              // (C,) out, biased
                              acc_t* __restrict__ sample_mean,      // (N, C) out
                              int64_t N, int64_t C, int64_t HW, int S, int64_t L,
                              int log2P) {                          // log2 of the rows per sample
  using M = Moments<acc_t, int64_t>;
  const auto merge = [](M& a, const M& b) { chan_merge(a, b); };
  const int tx = threadIdx.x % kFinalizeTX;
  const int ty = threadIdx.x / kFinalizeTX;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kFinalizeTX + tx;
  const int p = finalize_lane(ty, log2P);
  __shared__ M smem[kFinalizeThreads];
  M total{0, 0, 0};
  for (int64_t n0 = 0; n0 < N; n0 += finalize_pass(log2P)) {  // uniform over the block
    const int64_t n = finalize_sample(n0, ty, log2P);
    const bool active = c < C && n < N;
    M sample{0, 0, 0};
    if (active) {
      finalize_segments(S, log2P, p, [&](int s) {
        const int64_t q = (n * S + s) * C + c;
        chan_merge(sample, M{segment_count(HW, L, s), part_mean[q], part_m2[q]});
      });
    }
    if (log2P > 0) sample = tree_reduce_groups(sample, smem, tx, ty, kFinalizeTX, 1 << log2P, merge);
    if (active && p == 0) {
      sample_mean[n * C + c] = sample.mean;
      chan_merge(total, sample);
    }
  }
  total = tree_reduce_y(total, smem, tx, ty, kFinalizeTX, kFinalizeTY, merge);
  if (ty == 0 && c < C) {
    mean[c] = total.mean;
    var[c] = total.m2 / static_cast<acc_t>(total.count);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_stats_cuda(const at::Tensor& y) {
  const ActivationInfo info = check_activation("bn_stats", "y", y);
  const c10::cuda::CUDAGuard guard(y.device());
  const auto opts = y.options().dtype(acc_scalar_type(y));
  if (info.numel() == 0) {  // the mean of nothing is NaN, as in torch.var_mean
    const double nan = std::numeric_limits<double>::quiet_NaN();
    return {at::full({info.C}, nan, opts), at::full({info.C}, nan, opts), at::full({info.N, info.C}, nan, opts)};
  }
  at::Tensor mean = at::empty({info.C}, opts);
  at::Tensor var = at::empty({info.C}, opts);
  at::Tensor sample_mean = at::empty({info.N, info.C}, opts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = sm_count();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bn_stats_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* y_p = y.const_data_ptr<scalar_t>();
    const ReducePlan plan = plan_reduce_for<BnStatsOp<scalar_t, 1>>(info, pointer_alignment(y_p), 16, sms);
    const int64_t part_size = info.N * plan.S * info.C;
    at::Tensor part = at::empty({2, part_size}, opts);
    acc_t* part_mean = part.mutable_data_ptr<acc_t>();
    acc_t* part_m2 = part_mean + part_size;
    with_width<scalar_t>(plan.V, [&](auto v) {
      for_each_chunk(info, [&](int64_t n0, int64_t n_chunk) {
        const int64_t part_at = partial_offset(info, plan.S, n0);
        const BnStatsOp<scalar_t, decltype(v)::value> op{sample_ptr(y_p, n0, info), part_mean + part_at,
                                                         part_m2 + part_at};
        launch_reduce(op, plan, info, n_chunk, stream);
      });
    });
    _bn_stats_finalize_kernel<acc_t><<<finalize_blocks(info.C), kFinalizeThreads, 0, stream>>>(
        part_mean, part_m2, mean.mutable_data_ptr<acc_t>(), var.mutable_data_ptr<acc_t>(),
        sample_mean.mutable_data_ptr<acc_t>(), info.N, info.C, info.HW, plan.S, plan.L,
        finalize_log2_lanes(info.N, plan.S));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {mean, var, sample_mean};
}

}  // namespace
}  // namespace cuda
}  // namespace resnet_fast

TORCH_LIBRARY_IMPL(resnet_fast, CUDA, m) { m.impl("bn_stats", &resnet_fast::cuda::bn_stats_cuda); }
