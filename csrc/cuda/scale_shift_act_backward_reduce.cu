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

#include <type_traits>

namespace resnet_fast {
namespace cuda {
namespace {

// kSpec < 0: the flags are read at run time (relu, the residual mode, res_center given).
// kSpec >= 0: they are compile-time bits (kSpecRelu, kSpecAffine, kSpecResCenter) and the
// coefficients and sums a combination does not use drop out of the kernel: the NHWC 16-byte
// kernels hold V of each per thread (6V coefficients and 3V sums when all are live: 119
// registers at half/bf16, 2 blocks per SM), so each combination gets its own kernel there.
constexpr int kSpecRelu = 1, kSpecAffine = 2, kSpecResCenter = 4;

template <typename scalar_t, int V, int kSpec = -1>
struct BackwardReduceOp {
  using scalar_type = scalar_t;
  using acc_t = acc_type<scalar_t>;
  static constexpr int kVec = V;
  static constexpr int kUnroll = 2;     // NCHW: packs per batch
  // NHWC: rows per batch. One with every coefficient live (6V coefficients, 3V sums: 119
  // registers at V = 8); two where the combination leaves registers for a second row in
  // flight (no residual coefficients, no residual sums: bn_relu's and plain BN's backward).
  static constexpr int kRowUnroll = kSpec >= 0 && (kSpec & (kSpecAffine | kSpecResCenter)) == 0 ? 2 : 1;
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
  using PlaneContext = Coefs<1>;
  using RowContext = Coefs<V>;
  using Pk = Pack<scalar_t, V>;

  ScaleShiftArgs<scalar_t> a;             // y, residual, scale, shift, ..., this chunk
  const scalar_t* __restrict__ grad_out;  // like y, this chunk
  const acc_t* __restrict__ center;       // (C,)
  const acc_t* __restrict__ res_center;   // (C,), or nullptr: no sum_g_res
  acc_t* __restrict__ part_g;             // (N, S, C) partial sums, this chunk
  acc_t* __restrict__ part_gy;            // (N, S, C)
  acc_t* __restrict__ part_gr;            // (N, S, C), or nullptr with res_center

  __device__ __forceinline__ bool relu() const {
    if constexpr (kSpec < 0) {
      return a.relu;
    } else {
      return (kSpec & kSpecRelu) != 0;
    }
  }
  __device__ __forceinline__ bool affine() const {  // res_scale/res_shift enter z (relu only)
    if constexpr (kSpec < 0) {
      return a.mode == ResMode::kAffine;
    } else {
      return (kSpec & kSpecAffine) != 0;
    }
  }
  __device__ __forceinline__ bool with_res_center() const {
    if constexpr (kSpec < 0) {
      return res_center != nullptr;
    } else {
      return (kSpec & kSpecResCenter) != 0;
    }
  }
  // The residual mode as z needs it; kAffine only when affine() (a compile-time false drops
  // res_scale/res_shift).
  __device__ __forceinline__ ResMode mode() const {
    if (affine()) return ResMode::kAffine;
    return a.mode == ResMode::kNone ? ResMode::kNone : ResMode::kPlain;
  }

  __device__ __forceinline__ bool needs_residual() const {
    return (relu() && a.mode != ResMode::kNone) || with_res_center();
  }

  template <int W>
  __device__ __forceinline__ Coefs<W> context(int c, int nc) const {
    Coefs<W> k{};
    load_coef<W>(center + c, k.center);
    if (relu()) {
      load_coef<W>(a.scale + nc, k.scale);
      load_coef<W>(a.shift + nc, k.shift);
      if (affine()) {
        load_coef<W>(a.res_scale + c, k.res_scale);
        load_coef<W>(a.res_shift + c, k.res_shift);
      }
    }
    if (with_res_center()) load_coef<W>(res_center + c, k.res_center);
    return k;
  }
  __device__ __forceinline__ Coefs<1> plane_context(int, int c, int nc, uint32_t) const { return context<1>(c, nc); }
  __device__ __forceinline__ Coefs<V> row_context(int, int c0, int nc0, uint32_t, uint32_t, int) const {
    return context<V>(c0, nc0);
  }

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
    if (relu()) {
      g = relu_mask(pre_activation(y_a, k.scale[j], k.shift[j], r_a, k.res_scale[j], k.res_shift[j], mode()), g);
    }
    sg += g;
    sgy += g * (y_a - k.center[j]);
    if (with_res_center()) sgr += g * (r_a - k.res_center[j]);
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

  __device__ __forceinline__ void store_plane(const PlaneState& st, const PlaneContext&, int p, int) const {
    part_g[p] = st.g;
    part_gy[p] = st.gy;
    if (with_res_center()) part_gr[p] = st.gr;
  }

  __device__ __forceinline__ void store_rows(const RowState& st, const RowContext&, int p, int) const {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      part_g[p + j] = st.g[j];
      part_gy[p + j] = st.gy[j];
      if (with_res_center()) part_gr[p + j] = st.gr[j];
    }
  }
};

// Block: 32 channels x 32 rows; a pass gives each sample of 32 / P a group of P rows (P > 1
// only when N < 32: launch_plan.h "stage 2"); sum_g_res adds each row's partials, then a
// fixed tree over the rows.
template <typename acc_t>
__global__ void __launch_bounds__(kFinalizeThreads)
    _backward_reduce_finalize_kernel(const acc_t* __restrict__ part_g,   // (N, S, C)
                                     const acc_t* __restrict__ part_gy,  // (N, S, C)
                                     const acc_t* __restrict__ part_gr,  // (N, S, C) or nullptr
                                     acc_t* __restrict__ sum_g,          // (N, C) out
                                     acc_t* __restrict__ sum_g_y,        // (N, C) out
                                     acc_t* __restrict__ sum_g_res,      // (C,) out, or nullptr
                                     int64_t N, int64_t C, int S,
                                     int log2P) {                        // log2 of the rows per sample
  struct Sums {
    acc_t g, gy;
  };
  const auto add = [](Sums& x, const Sums& y) {
    x.g += y.g;
    x.gy += y.gy;
  };
  const int tx = threadIdx.x % kFinalizeTX;
  const int ty = threadIdx.x / kFinalizeTX;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kFinalizeTX + tx;
  const int p = finalize_lane(ty, log2P);
  __shared__ Sums smem[kFinalizeThreads];
  acc_t gr = 0;
  for (int64_t n0 = 0; n0 < N; n0 += finalize_pass(log2P)) {  // uniform over the block
    const int64_t n = finalize_sample(n0, ty, log2P);
    const bool active = c < C && n < N;
    Sums sample{0, 0};
    if (active) {
      finalize_segments(S, log2P, p, [&](int s) {
        const int64_t q = (n * S + s) * C + c;
        sample.g += part_g[q];
        sample.gy += part_gy[q];
        if (part_gr != nullptr) gr += part_gr[q];
      });
    }
    if (log2P > 0) sample = tree_reduce_groups(sample, smem, tx, ty, kFinalizeTX, 1 << log2P, add);
    if (active && p == 0) {
      sum_g[n * C + c] = sample.g;
      sum_g_y[n * C + c] = sample.gy;
    }
  }
  if (sum_g_res == nullptr) return;  // the same for the whole grid
  acc_t* smem_gr = reinterpret_cast<acc_t*>(smem);  // free: tree_reduce_groups ended with a barrier
  gr = tree_reduce_y(gr, smem_gr, tx, ty, kFinalizeTX, kFinalizeTY, [](acc_t& x, const acc_t& y) { x += y; });
  if (ty == 0 && c < C) sum_g_res[c] = gr;
}

// Stage 1 over every chunk with the Op type Op (its pointers offset per chunk).
template <class Op, bool kNchw, bool kNhwc, typename scalar_t, typename acc_t>
void run_backward_reduce(const ScaleShiftArgs<scalar_t>& args, const scalar_t* grad_out_p, const acc_t* center_p,
                         const acc_t* res_center_p, acc_t* part_g, acc_t* part_gy, acc_t* part_gr,
                         const ReducePlan& plan, const ActivationInfo& info, cudaStream_t stream) {
  for_each_chunk(info, [&](int64_t n0, int64_t n_chunk) {
    const int64_t part_at = partial_offset(info, plan.S, n0);  // partials of sample n0
    const Op op{args.from_sample(n0, info), sample_ptr(grad_out_p, n0, info), center_p, res_center_p,
                part_g + part_at, part_gy + part_at, part_gr == nullptr ? nullptr : part_gr + part_at};
    launch_reduce<Op, kNchw, kNhwc>(op, plan, info, n_chunk, stream);
  });
}

// f(IntC<spec>{}) for the compile-time flags of a call (6 combinations: affine only with relu).
template <class F>
void with_spec(bool relu, bool affine, bool res_center, F&& f) {
  const int rc = res_center ? kSpecResCenter : 0;
  if (!relu) {
    if (rc) return f(IntC<kSpecResCenter>{});
    return f(IntC<0>{});
  }
  if (affine) {
    if (rc) return f(IntC<kSpecRelu | kSpecAffine | kSpecResCenter>{});
    return f(IntC<kSpecRelu | kSpecAffine>{});
  }
  if (rc) return f(IntC<kSpecRelu | kSpecResCenter>{});
  return f(IntC<kSpecRelu>{});
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
    // 16-byte coefficient loads only in the NHWC kernels (NCHW reads one value per plane).
    const int align = pointer_alignment(grad_out_p, args.y, args.residual);
    const int coef_align =
        pointer_alignment(args.scale, args.shift, args.res_scale, args.res_shift, center_p, res_center_p);
    const ReducePlan plan = plan_reduce_for<BackwardReduceOp<scalar_t, 1>>(info, align, coef_align, sms);
    const int64_t part_size = info.N * plan.S * info.C;
    at::Tensor part = at::empty({res_center.has_value() ? 3 : 2, part_size}, opts);
    acc_t* part_g = part.mutable_data_ptr<acc_t>();
    acc_t* part_gy = part_g + part_size;
    acc_t* part_gr = res_center.has_value() ? part_g + 2 * part_size : nullptr;
    with_width<scalar_t>(plan.V, [&](auto v) {
      constexpr int V = decltype(v)::value;
      const auto run = [&](auto op_type, auto nchw, auto nhwc) {
        using Op = typename decltype(op_type)::type;
        run_backward_reduce<Op, decltype(nchw)::value, decltype(nhwc)::value>(
            args, grad_out_p, center_p, res_center_p, part_g, part_gy, part_gr, plan, info, stream);
      };
      if constexpr (V > 2) {  // the 16- and 8-byte kernels of float/half/bf16: one kernel per combination
        if (info.layout == Layout::NHWC) {
          with_spec(relu, args.mode == ResMode::kAffine, res_center.has_value(), [&](auto spec) {
            run(std::type_identity<BackwardReduceOp<scalar_t, V, decltype(spec)::value>>{}, std::false_type{},
                std::true_type{});
          });
        } else {
          run(std::type_identity<BackwardReduceOp<scalar_t, V>>{}, std::true_type{}, std::false_type{});
        }
      } else {
        run(std::type_identity<BackwardReduceOp<scalar_t, V>>{}, std::true_type{}, std::true_type{});
      }
    });
    _backward_reduce_finalize_kernel<acc_t><<<finalize_blocks(info.C), kFinalizeThreads, 0, stream>>>(
        part_g, part_gy, part_gr, sum_g.mutable_data_ptr<acc_t>(), sum_g_y.mutable_data_ptr<acc_t>(),
        res_center.has_value() ? sum_g_res.mutable_data_ptr<acc_t>() : nullptr, info.N, info.C, plan.S,
        finalize_log2_lanes(info.N, plan.S));
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
