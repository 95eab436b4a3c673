// resnet_fast::scale_shift_act_backward_apply on CUDA: the elementwise half of the backward
// of out = act(z), z = y*scale[n,c] + shift[n,c] + R. With g = grad_out * (z > 0) when
// relu (z recomputed exactly as the forward rounded it) else grad_out:
//   grad_y        = k_g[n,c] * g + k_0[n,c] + k_y[c] * (y - center[c])
//   grad_residual = res_k_g[c] * g + res_k_0[c] + res_k_r[c] * (residual - res_center[c])
// (BatchNorm's backward dx = a*(g - mean(g) - xhat*mean(g*xhat)) folded by the Python layer
// into k_g, k_0, k_y from the sums of scale_shift_act_backward_reduce.) Each product and
// sum is rounded once, in the reference's order.
//
// One pass: reads grad_out, y (and residual), writes grad_y (and grad_residual).
// See elementwise.cuh for the thread layout.
#include "common.cuh"
#include "elementwise.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace resnet_fast {
namespace cuda {
namespace {

// out = k_g*g + k_0 + k_x*(x - center), rounded as `k_g*g + k_0 + k_x*(x - center)` in torch.
template <int V, typename acc_t>
__device__ __forceinline__ void affine_grad(const acc_t (&k_g)[V], const acc_t (&k_0)[V], const acc_t (&k_x)[V],
                                            const acc_t (&center)[V], const acc_t (&g)[V], const acc_t (&x)[V],
                                            acc_t (&out)[V]) {
#pragma unroll
  for (int j = 0; j < V; ++j) {
    out[j] = add_rn(add_rn(mul_rn(k_g[j], g[j]), k_0[j]), mul_rn(k_x[j], sub_rn(x[j], center[j])));
  }
}

template <typename scalar_t>
struct BackwardApplyOp {
  using acc_t = acc_type<scalar_t>;
  static constexpr int kUnroll = 2;  // vectors per thread with their loads in flight (3 tensors each)
  ScaleShiftArgs<scalar_t> a;             // y, residual, scale, shift, ..., this chunk
  const scalar_t* __restrict__ grad_out;  // like y, this chunk
  scalar_t* __restrict__ grad_y;          // like y, this chunk
  scalar_t* __restrict__ grad_res;        // like y, this chunk, or nullptr (no res_k_g)
  const acc_t* __restrict__ k_g;          // (N, C), this chunk
  const acc_t* __restrict__ k_0;          // (N, C), this chunk
  const acc_t* __restrict__ k_y;          // (C,)
  const acc_t* __restrict__ center;       // (C,)
  const acc_t* __restrict__ res_k_g;      // (C,) or nullptr
  const acc_t* __restrict__ res_k_0;      // (C,) or nullptr
  const acc_t* __restrict__ res_k_r;      // (C,) or nullptr
  const acc_t* __restrict__ res_center;   // (C,) or nullptr

  template <int W>
  struct In {
    Pack<scalar_t, W> g, y, r;
  };

  __device__ __forceinline__ bool needs_residual() const {
    return (a.relu && a.mode != ResMode::kNone) || grad_res != nullptr;
  }

  template <int W>
  __device__ __forceinline__ In<W> load(uint32_t i) const {
    In<W> in{};
    in.g = load_pack<W>(grad_out + i);
    in.y = load_pack<W>(a.y + i);
    if (needs_residual()) in.r = load_pack<W>(a.residual + i);
    return in;
  }

  template <int W, Layout L>
  __device__ __forceinline__ void finish(uint32_t i, const Pos& pos, const In<W>& in) const {
    acc_t g[W], yv[W], rv[W], out[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
      g[j] = static_cast<acc_t>(in.g.v[j]);
      yv[j] = static_cast<acc_t>(in.y.v[j]);
      rv[j] = static_cast<acc_t>(in.r.v[j]);  // zero unless loaded
    }
    if (a.relu) {
      acc_t z[W];
      pre_activation_vec<W, L>(a, pos, yv, rv, z);
#pragma unroll
      for (int j = 0; j < W; ++j) g[j] = relu_mask(z[j], g[j]);
    }
    {
      acc_t kg[W], k0[W], ky[W], ce[W];
      gather_nc<W, L>(k_g, pos, kg);
      gather_nc<W, L>(k_0, pos, k0);
      gather_c<W, L>(k_y, pos, ky);
      gather_c<W, L>(center, pos, ce);
      affine_grad(kg, k0, ky, ce, g, yv, out);
      store_acc<W>(grad_y + i, out);
    }
    if (grad_res != nullptr) {
      acc_t kg[W], k0[W], kr[W], ce[W];
      gather_c<W, L>(res_k_g, pos, kg);
      gather_c<W, L>(res_k_0, pos, k0);
      gather_c<W, L>(res_k_r, pos, kr);
      gather_c<W, L>(res_center, pos, ce);
      affine_grad(kg, k0, kr, ce, g, rv, out);
      store_acc<W>(grad_res + i, out);
    }
  }
};

std::tuple<at::Tensor, at::Tensor> scale_shift_act_backward_apply_cuda(
    const at::Tensor& grad_out, const at::Tensor& y, const at::Tensor& scale, const at::Tensor& shift,
    const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& res_scale,
    const std::optional<at::Tensor>& res_shift, bool relu, const at::Tensor& k_g, const at::Tensor& k_0,
    const at::Tensor& k_y, const at::Tensor& center, const std::optional<at::Tensor>& res_k_g,
    const std::optional<at::Tensor>& res_k_0, const std::optional<at::Tensor>& res_k_r,
    const std::optional<at::Tensor>& res_center) {
  constexpr const char* kOp = "scale_shift_act_backward_apply";
  const ActivationInfo info = check_activation(kOp, "y", y);
  check_like(kOp, "grad_out", grad_out, y, info);
  check_pre_activation(kOp, y, info, scale, shift, residual, res_scale, res_shift);
  check_coef(kOp, "k_g", k_g, {info.N, info.C}, y);
  check_coef(kOp, "k_0", k_0, {info.N, info.C}, y);
  check_coef(kOp, "k_y", k_y, {info.C}, y);
  check_coef(kOp, "center", center, {info.C}, y);
  const bool with_res = res_k_g.has_value();
  check_requires(kOp, "res_k_g", with_res, "residual", residual.has_value());
  check_requires(kOp, "res_k_g", with_res, "res_k_0, res_k_r and res_center",
                 res_k_0.has_value() && res_k_r.has_value() && res_center.has_value());
  check_coef(kOp, "res_k_g", res_k_g, {info.C}, y);
  check_coef(kOp, "res_k_0", res_k_0, {info.C}, y);
  check_coef(kOp, "res_k_r", res_k_r, {info.C}, y);
  check_coef(kOp, "res_center", res_center, {info.C}, y);
  const c10::cuda::CUDAGuard guard(y.device());
  at::Tensor grad_y = at::empty_like(y);  // same strides as y: same layout
  at::Tensor grad_res = with_res ? at::empty_like(y) : at::empty({0}, y.options());
  if (info.numel() == 0) return {grad_y, grad_res};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = sm_count();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "scale_shift_act_backward_apply_cuda",
                                  [&] {
    using acc_t = acc_type<scalar_t>;
    const auto args = scale_shift_args<scalar_t>(y, scale, shift, residual, res_scale, res_shift, relu);
    // Only read with res_k_g (res_center may be given alone; the reference ignores it then).
    const auto res_coef = [&](const std::optional<at::Tensor>& t) { return with_res ? opt_cptr<acc_t>(t) : nullptr; };
    for_each_chunk(info, [&](int64_t n0, int64_t n_chunk) {
      const BackwardApplyOp<scalar_t> op{args.from_sample(n0, info),
                                         sample_ptr(grad_out.const_data_ptr<scalar_t>(), n0, info),
                                         sample_ptr(grad_y.mutable_data_ptr<scalar_t>(), n0, info),
                                         with_res ? sample_ptr(grad_res.mutable_data_ptr<scalar_t>(), n0, info)
                                                  : nullptr,
                                         nc_ptr(k_g.const_data_ptr<acc_t>(), n0, info),
                                         nc_ptr(k_0.const_data_ptr<acc_t>(), n0, info),
                                         k_y.const_data_ptr<acc_t>(),
                                         center.const_data_ptr<acc_t>(),
                                         res_coef(res_k_g),
                                         res_coef(res_k_0),
                                         res_coef(res_k_r),
                                         res_coef(res_center)};
      const bool vec = elementwise_vec_ok<scalar_t>(
          info, pointer_alignment(op.a.y, op.a.residual, op.grad_out, op.grad_y, op.grad_res),
          pointer_alignment(op.a.scale, op.a.shift, op.a.res_scale, op.a.res_shift, op.k_g, op.k_0, op.k_y,
                            op.center, op.res_k_g, op.res_k_0, op.res_k_r, op.res_center));
      launch_elementwise<scalar_t>(op, vec, info, n_chunk, sms, stream);
    });
  });
  return {grad_y, grad_res};
}

}  // namespace
}  // namespace cuda
}  // namespace resnet_fast

TORCH_LIBRARY_IMPL(resnet_fast, CUDA, m) {
  m.impl("scale_shift_act_backward_apply", &resnet_fast::cuda::scale_shift_act_backward_apply_cuda);
}
