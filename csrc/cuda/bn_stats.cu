// resnet_fast::bn_stats on CUDA: per-channel mean and biased variance over (N, H, W) and
// the per-sample means over (H, W), in one read of y.
//
// Stage 1 (reduce.cuh, BnStatsOp): Welford per thread, in batches: a batch of up to U*V
//   values (NCHW: U packs of one plane; NHWC: U rows of each of V channels) is centered
//   exactly in registers (batch_moments) and Chan-merged into the thread's moments, one
//   division per batch. Lanes/rows then merge with Chan's formula in a fixed order;
//   (mean, M2) of each (n, s, c) segment goes to the workspace.
// Stage 2 (_bn_stats_finalize_kernel): per channel, the S segments of each sample merge in
//   order into the sample's (mean, M2) -> sample_mean[n, c]; the samples merge per thread
//   and then in a fixed shared-memory tree -> mean[c], var[c] = M2 / (N*H*W).
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

template <typename scalar_t, int V>
struct BnStatsOp {
  using scalar_type = scalar_t;
  using acc_t = acc_type<scalar_t>;
  static constexpr int kVec = V;
  static constexpr int kUnroll = 4;
  static constexpr int kRowUnroll = 4;
  using PlaneState = Moments<acc_t, int>;
  struct RowState {  // V channels sharing one count
    int count;
    acc_t mean[V];
    acc_t m2[V];
  };
  struct Context {};  // no coefficients

  const scalar_t* __restrict__ y;  // (N, C, H, W), this chunk
  acc_t* __restrict__ part_mean;   // (N, S, C) segment means, this chunk
  acc_t* __restrict__ part_m2;     // (N, S, C) segment M2

  __device__ Context plane_context(int, int, int) const { return {}; }
  __device__ Context row_context(int, int, int) const { return {}; }

  // k (>= 1) packs of V values of one plane at off[0..k).
  __device__ __forceinline__ void accumulate_plane(PlaneState& st, Context, const uint32_t (&off)[kUnroll],
                                                   int k) const {
    Pack<scalar_t, V> x[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      x[u] = u < k ? load_pack<V>(y + off[u]) : Pack<scalar_t, V>{};
    }
    acc_t v[kUnroll * V];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int j = 0; j < V; ++j) v[u * V + j] = u < k ? static_cast<acc_t>(x[u].v[j]) : acc_t(0);
    }
    const int count = k * V;
    PlaneState batch{count, 0, 0};
    batch_moments(v, count, acc_t(1) / static_cast<acc_t>(count), batch.mean, batch.m2);
    chan_merge(st, batch);
  }

  // k (>= 1) rows of V channels at off[0..k).
  __device__ __forceinline__ void accumulate_rows(RowState& st, Context, const uint32_t (&off)[kRowUnroll], int k) const {
    Pack<scalar_t, V> x[kRowUnroll];
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      x[u] = u < k ? load_pack<V>(y + off[u]) : Pack<scalar_t, V>{};
    }
    const int n = st.count + k;
    const acc_t r = static_cast<acc_t>(k) / static_cast<acc_t>(n);
    const acc_t w = static_cast<acc_t>(st.count) * r;
    const acc_t inv_k = acc_t(1) / static_cast<acc_t>(k);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      acc_t col[kRowUnroll];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) col[u] = u < k ? static_cast<acc_t>(x[u].v[j]) : acc_t(0);
      acc_t mean_b, m2_b;
      batch_moments(col, k, inv_k, mean_b, m2_b);
      chan_update(st.mean[j], st.m2[j], mean_b, m2_b, r, w);
    }
    st.count = n;
  }

  __device__ __forceinline__ static void combine(PlaneState& a, const PlaneState& b) { chan_merge(a, b); }

  __device__ __forceinline__ static void combine(RowState& a, const RowState& b) {
    if (b.count == 0) return;
    if (a.count == 0) {
      a = b;
      return;
    }
    const int n = a.count + b.count;
    const acc_t r = static_cast<acc_t>(b.count) / static_cast<acc_t>(n);
    const acc_t w = static_cast<acc_t>(a.count) * r;
#pragma unroll
    for (int j = 0; j < V; ++j) chan_update(a.mean[j], a.m2[j], b.mean[j], b.m2[j], r, w);
    a.count = n;
  }

  __device__ __forceinline__ static PlaneState shfl_xor(const PlaneState& s, int offset) {
    return {__shfl_xor_sync(0xffffffffu, s.count, offset), __shfl_xor_sync(0xffffffffu, s.mean, offset),
            __shfl_xor_sync(0xffffffffu, s.m2, offset)};
  }

  __device__ __forceinline__ void store_plane(const PlaneState& st, int p) const {
    part_mean[p] = st.mean;
    part_m2[p] = st.m2;
  }

  __device__ __forceinline__ void store_rows(const RowState& st, int p) const {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      part_mean[p + j] = st.mean[j];
      part_m2[p + j] = st.m2[j];
    }
  }
};

// Block: 32 channels x 32 sample lanes. Segment s of a plane holds min(L, HW - s*L) values.
template <typename acc_t>
__global__ void __launch_bounds__(kFinalizeThreads)
    _bn_stats_finalize_kernel(const acc_t* __restrict__ part_mean,  // (N, S, C) segment means
                              const acc_t* __restrict__ part_m2,    // (N, S, C) segment M2
                              acc_t* __restrict__ mean,             // (C,) out
                              acc_t* __restrict__ var,              // (C,) out, biased
                              acc_t* __restrict__ sample_mean,      // (N, C) out
                              int64_t N, int64_t C, int64_t HW, int S, int64_t L) {
  using M = Moments<acc_t, int64_t>;
  const int tx = threadIdx.x % kFinalizeTX;
  const int ty = threadIdx.x / kFinalizeTX;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kFinalizeTX + tx;
  M total{0, 0, 0};
  if (c < C) {
    for (int64_t n = ty; n < N; n += kFinalizeTY) {
      M sample{0, 0, 0};
      for (int s = 0; s < S; ++s) {
        const int64_t p = (n * S + s) * C + c;
        chan_merge(sample, M{segment_count(HW, L, s), part_mean[p], part_m2[p]});
      }
      sample_mean[n * C + c] = sample.mean;
      chan_merge(total, sample);
    }
  }
  __shared__ M smem[kFinalizeThreads];
  total = tree_reduce_y(total, smem, tx, ty, kFinalizeTX, kFinalizeTY, [](M& a, const M& b) { chan_merge(a, b); });
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
    const ReducePlan plan = plan_reduce_for<BnStatsOp<scalar_t, 1>>(info, aligned16(y_p), sms);
    const int64_t part_size = info.N * plan.S * info.C;
    at::Tensor part = at::empty({2, part_size}, opts);
    acc_t* part_mean = part.mutable_data_ptr<acc_t>();
    acc_t* part_m2 = part_mean + part_size;
    with_vec<scalar_t>(plan.vec, [&](auto v) {
      for_each_chunk(info, [&](int64_t n0, int64_t n_chunk) {
        const int64_t part_at = partial_offset(info, plan.S, n0);
        const BnStatsOp<scalar_t, decltype(v)::value> op{sample_ptr(y_p, n0, info), part_mean + part_at,
                                                         part_m2 + part_at};
        launch_reduce(op, plan, info, n_chunk, stream);
      });
    });
    _bn_stats_finalize_kernel<acc_t><<<finalize_blocks(info.C), kFinalizeThreads, 0, stream>>>(
        part_mean, part_m2, mean.mutable_data_ptr<acc_t>(), var.mutable_data_ptr<acc_t>(),
        sample_mean.mutable_data_ptr<acc_t>(), info.N, info.C, info.HW, plan.S, plan.L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {mean, var, sample_mean};
}

}  // namespace
}  // namespace cuda
}  // namespace resnet_fast

TORCH_LIBRARY_IMPL(resnet_fast, CUDA, m) { m.impl("bn_stats", &resnet_fast::cuda::bn_stats_cuda); }
