// resnet_fast::scale_shift_act_backward_reduce on CUDA: the reductions of the backward of
//   out = act(z),  z = y*scale[n,c] + shift[n,c] + R  (R = 0 | residual | residual*res_scale[c] + res_shift[c])
// With g = grad_out * (z > 0) when relu (z recomputed, rounded as the forward did) else
// grad_out:
//   sum_g[n,c]    = sum_hw g
//   sum_g_y[n,c]  = sum_hw g * (y - center[c])
//   sum_g_res[c]  = sum_{n,hw} g * (residual - res_center[c])   (when res_center is given)
// These are the dL/dscale, dL/dshift-type sums from which the Python layer forms the BN
// backward coefficients (k_g, k_0, k_y of scale_shift_act_backward_apply).
//
// One read of grad_out, y and (when needed) residual. Stage 1 (reduce.cuh,
// BackwardReduceOp): per-thread sums in a fixed order, xor-shuffle (NCHW) or
// shared-memory tree (NHWC) merges, partials (N, S, C) to a workspace. Stage 2
// (_backward_reduce_finalize_kernel): per (n, c) the S partials in order; per channel the
// samples per thread, then a fixed tree. Deterministic.
#include "common.cuh"
#include "reduce.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace resnet_fast {
namespace cuda {
namespace {

template <typename scalar_t, int V>
struct BackwardReduceOp {
  using scalar_type = scalar_t;
  using acc_t = acc_type<scalar_t>;
  static constexpr int kVec = V;
  static constexpr int kUnroll = 2;     // NCHW: packs per batch
  static constexpr int kRowUnroll = 1;  // NHWC: rows per batch (registers: 6V coefficients, 3V sums)
  struct PlaneState {
    acc_t g, gy, gr;
  };
  struct RowState {
    acc_t g[V], gy[V], gr[V];
  };
  template <int W>  // coefficients of W consecutive channels (one when NCHW)
  struct Coefs {
    acc_t scale[W], shift[W], res_scale[W], res_shift[W], center[W], res_center[W];
  };
  using Pk = Pack<scalar_t, V>;

  ScaleShiftArgs<scalar_t> a;             // y, residual, scale, shift, ..., this chunk
  const scalar_t* __restrict__ grad_out;  // like y, this chunk
  const acc_t* __restrict__ center;       // (C,)
  const acc_t* __restrict__ res_center;   // (C,), or nullptr: no sum_g_res
  acc_t* __restrict__ part_g;             // (N, S, C) partial sums, this chunk
  acc_t* __restrict__ part_gy;            // (N, S, C)
  acc_t* __restrict__ part_gr;            // (N, S, C), or nullptr with res_center

  __device__ __forceinline__ bool needs_residual() const {
    return (a.relu && a.mode != ResMode::kNone) || res_center != nullptr;
  }

  template <int W>
  __device__ __forceinline__ Coefs<W> context(int c, int nc) const {
    Coefs<W> k{};
    load_coef<W>(center + c, k.center);
    if (a.relu) {
      load_coef<W>(a.scale + nc, k.scale);
      load_coef<W>(a.shift + nc, k.shift);
      if (a.mode == ResMode::kAffine) {
        load_coef<W>(a.res_scale + c, k.res_scale);
        load_coef<W>(a.res_shift + c, k.res_shift);
      }
    }
    if (res_center != nullptr) load_coef<W>(res_center + c, k.res_center);
    return k;
  }
  __device__ __forceinline__ Coefs<1> plane_context(int, int c, int nc) const { return context<1>(c, nc); }
  __device__ __forceinline__ Coefs<V> row_context(int, int c0, int nc0) const { return context<V>(c0, nc0); }

  // The packs at off[0..k) of grad_out, y, residual; zeros past k and for an unused residual.
  template <int U>
  __device__ __forceinline__ void load(const uint32_t (&off)[U], int k, Pk (&go)[U], Pk (&yv)[U], Pk (&rv)[U]) const {
    const bool with_r = needs_residual();
#pragma unroll
    for (int u = 0; u < U; ++u) {
      go[u] = u < k ? load_pack<V>(grad_out + off[u]) : Pk{};
      yv[u] = u < k ? load_pack<V>(a.y + off[u]) : Pk{};
      rv[u] = u < k && with_r ? load_pack<V>(a.residual + off[u]) : Pk{};
    }
  }

  // Adds g, g*(y - center), g*(r - res_center) of one element of channel slot j.
  template <int W>
  __device__ __forceinline__ void add(const Coefs<W>& k, int j, scalar_t go, scalar_t yv, scalar_t rv, acc_t& sg,
                                      acc_t& sgy, acc_t& sgr) const {
    const acc_t y_a = static_cast<acc_t>(yv);
    const acc_t r_a = static_cast<acc_t>(rv);
    acc_t g = static_cast<acc_t>(go);
    if (a.relu) {
      g = relu_mask(pre_activation(y_a, k.scale[j], k.shift[j], r_a, k.res_scale[j], k.res_shift[j], a.mode), g);
    }
    sg += g;
    sgy += g * (y_a - k.center[j]);
    if (res_center != nullptr) sgr += g * (r_a - k.res_center[j]);
  }

  __device__ __forceinline__ void accumulate_plane(PlaneState& st, const Coefs<1>& k, const uint32_t (&off)[kUnroll],
                                                   int count) const {
    Pk go[kUnroll], yv[kUnroll], rv[kUnroll];
    load(off, count, go, yv, rv);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (u < count) {
#pragma unroll
        for (int j = 0; j < V; ++j) add(k, 0, go[u].v[j], yv[u].v[j], rv[u].v[j], st.g, st.gy, st.gr);
      }
    }
  }

  __device__ __forceinline__ void accumulate_rows(RowState& st, const Coefs<V>& k,
                                                  const uint32_t (&off)[kRowUnroll], int count) const {
    Pk go[kRowUnroll], yv[kRowUnroll], rv[kRowUnroll];
    load(off, count, go, yv, rv);
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      if (u < count) {
#pragma unroll
        for (int j = 0; j < V; ++j) add(k, j, go[u].v[j], yv[u].v[j], rv[u].v[j], st.g[j], st.gy[j], st.gr[j]);
      }
    }
  }

  __device__ __forceinline__ static void combine(PlaneState& dst, const PlaneState& src) {
    dst.g += src.g;
    dst.gy += src.gy;
    dst.gr += src.gr;
  }

  __device__ __forceinline__ static void combine(RowState& dst, const RowState& src) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      dst.g[j] += src.g[j];
      dst.gy[j] += src.gy[j];
      dst.gr[j] += src.gr[j];
    }
  }

  __device__ __forceinline__ static PlaneState shfl_xor(const PlaneState& s, int offset) {
    return {__shfl_xor_sync(0xffffffffu, s.g, offset), __shfl_xor_sync(0xffffffffu, s.gy, offset),
            __shfl_xor_sync(0xffffffffu, s.gr, offset)};
  }

  __device__ __forceinline__ void store_plane(const PlaneState& st, int p) const {
    part_g[p] = st.g;
    part_gy[p] = st.gy;
    if (part_gr != nullptr) part_gr[p] = st.gr;
  }

  __device__ __forceinline__ void store_rows(const RowState& st, int p) const {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      part_g[p + j] = st.g[j];
      part_gy[p + j] = st.gy[j];
      if (part_gr != nullptr) part_gr[p + j] = st.gr[j];
    }
  }
};

// Block: 32 channels x 32 sample lanes.
template <typename acc_t>
__global__ void __launch_bounds__(kFinalizeThreads)
    _backward_reduce_finalize_kernel(const acc_t* __restrict__ part_g,   // (N, S, C)
                                     const acc_t* __restrict__ part_gy,  // (N, S, C)
                                     const acc_t* __restrict__ part_gr,  // (N, S, C) or nullptr
                                     acc_t* __restrict__ sum_g,          // (N, C) out
                                     acc_t* __restrict__ sum_g_y,        // (N, C) out
                                     acc_t* __restrict__ sum_g_res,      // (C,) out, or nullptr
                                     int64_t N, int64_t C, int S) {
  const int tx = threadIdx.x % kFinalizeTX;
  const int ty = threadIdx.x / kFinalizeTX;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kFinalizeTX + tx;
  acc_t gr = 0;
  if (c < C) {
    for (int64_t n = ty; n < N; n += kFinalizeTY) {
      acc_t g = 0, gy = 0;
      for (int s = 0; s < S; ++s) {
        const int64_t p = (n * S + s) * C + c;
        g += part_g[p];
        gy += part_gy[p];
        if (part_gr != nullptr) gr += part_gr[p];
      }
      sum_g[n * C + c] = g;
      sum_g_y[n * C + c] = gy;
    }
  }
  if (sum_g_res == nullptr) return;  // the same for the whole grid
  __shared__ acc_t smem[kFinalizeThreads];
  gr = tree_reduce_y(gr, smem, tx, ty, kFinalizeTX, kFinalizeTY, [](acc_t& a, const acc_t& b) { a += b; });
  if (ty == 0 && c < C) sum_g_res[c] = gr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scale_shift_act_backward_reduce_cuda(
    const at::Tensor& grad_out, const at::Tensor& y, const at::Tensor& scale, const at::Tensor& shift,
    const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& res_scale,
    const std::optional<at::Tensor>& res_shift, bool relu, const at::Tensor& center,
    const std::optional<at::Tensor>& res_center) {
  constexpr const char* kOp = "scale_shift_act_backward_reduce";
  const ActivationInfo info = check_activation(kOp, "y", y);
  check_like(kOp, "grad_out", grad_out, y, info);
  check_pre_activation(kOp, y, info, scale, shift, residual, res_scale, res_shift);
  check_coef(kOp, "center", center, {info.C}, y);
  check_requires(kOp, "res_center", res_center.has_value(), "residual", residual.has_value());
  check_coef(kOp, "res_center", res_center, {info.C}, y);
  const c10::cuda::CUDAGuard guard(y.device());
  const auto opts = y.options().dtype(acc_scalar_type(y));
  const int64_t res_size = res_center.has_value() ? info.C : 0;
  if (info.numel() == 0) {  // sums over nothing
    return {at::zeros({info.N, info.C}, opts), at::zeros({info.N, info.C}, opts), at::zeros({res_size}, opts)};
  }
  at::Tensor sum_g = at::empty({info.N, info.C}, opts);
  at::Tensor sum_g_y = at::empty({info.N, info.C}, opts);
  at::Tensor sum_g_res = at::empty({res_size}, opts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = sm_count();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "scale_shift_act_backward_reduce_cuda",
                                  [&] {
    using acc_t = acc_type<scalar_t>;
    const auto args = scale_shift_args<scalar_t>(y, scale, shift, residual, res_scale, res_shift, relu);
    const scalar_t* grad_out_p = grad_out.const_data_ptr<scalar_t>();
    const acc_t* center_p = center.const_data_ptr<acc_t>();
    const acc_t* res_center_p = opt_cptr<acc_t>(res_center);
    const bool aligned = all_aligned16(grad_out_p, args.y, args.residual, args.scale, args.shift, args.res_scale,
                                       args.res_shift, center_p, res_center_p);
    const ReducePlan plan = plan_reduce_for<BackwardReduceOp<scalar_t, 1>>(info, aligned, sms);
    const int64_t part_size = info.N * plan.S * info.C;
    at::Tensor part = at::empty({res_center.has_value() ? 3 : 2, part_size}, opts);
    acc_t* part_g = part.mutable_data_ptr<acc_t>();
    acc_t* part_gy = part_g + part_size;
    acc_t* part_gr = res_center.has_value() ? part_g + 2 * part_size : nullptr;
    with_vec<scalar_t>(plan.vec, [&](auto v) {
      for_each_chunk(info, [&](int64_t n0, int64_t n_chunk) {
        const int64_t part_at = partial_offset(info, plan.S, n0);  // partials of sample n0
        const BackwardReduceOp<scalar_t, decltype(v)::value> op{
            args.from_sample(n0, info), sample_ptr(grad_out_p, n0, info), center_p, res_center_p, part_g + part_at,
            part_gy + part_at, part_gr == nullptr ? nullptr : part_gr + part_at};
        launch_reduce(op, plan, info, n_chunk, stream);
      });
    });
    _backward_reduce_finalize_kernel<acc_t><<<finalize_blocks(info.C), kFinalizeThreads, 0, stream>>>(
        part_g, part_gy, part_gr, sum_g.mutable_data_ptr<acc_t>(), sum_g_y.mutable_data_ptr<acc_t>(),
        res_center.has_value() ? sum_g_res.mutable_data_ptr<acc_t>() : nullptr, info.N, info.C, plan.S);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {sum_g, sum_g_y, sum_g_res};
}

}  // namespace
}  // namespace cuda
}  // namespace resnet_fast

TORCH_LIBRARY_IMPL(resnet_fast, CUDA, m) {
  m.impl("scale_shift_act_backward_reduce", &resnet_fast::cuda::scale_shift_act_backward_reduce_cuda);
}
