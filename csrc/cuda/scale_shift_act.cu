// resnet_fast::scale_shift_act on CUDA:
//   out = act(y * scale[n,c] + shift[n,c] + R),  R = 0 | residual | residual*res_scale[c] + res_shift[c]
// One elementwise pass: reads y (and residual), writes out; 2 (3) activation-sized
// transfers. See elementwise.cuh for the thread layout.
#include "common.cuh"
#include "elementwise.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace resnet_fast {
namespace cuda {
namespace {

template <typename scalar_t>
struct ScaleShiftActOp {
  using acc_t = acc_type<scalar_t>;
  static constexpr int kUnroll = 2;  // vectors per thread with their loads in flight
  ScaleShiftArgs<scalar_t> a;  // y, residual, coefficients, this chunk
  scalar_t* __restrict__ out;  // like y, this chunk

  template <int W>
  struct In {  // widened at load (a narrow residual kept across its branch cost ptxas a stack slot)
    acc_t y[W], r[W];
  };

  template <int W>
  __device__ __forceinline__ In<W> load(uint32_t i) const {
    In<W> in{};
    load_acc<W>(a.y + i, in.y);
    if (a.mode != ResMode::kNone) load_acc<W>(a.residual + i, in.r);
    return in;
  }

  template <int W, Layout L>
  __device__ __forceinline__ void finish(uint32_t i, const Pos& pos, const In<W>& in) const {
    acc_t z[W];
    pre_activation_vec<W, L>(a, pos, in.y, in.r, z);
    if (a.relu) {
#pragma unroll
      for (int j = 0; j < W; ++j) z[j] = cuda::relu(z[j]);
    }
    store_acc<W>(out + i, z);
  }
};

at::Tensor scale_shift_act_cuda(const at::Tensor& y, const at::Tensor& scale, const at::Tensor& shift,
                                const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& res_scale,
                                const std::optional<at::Tensor>& res_shift, bool relu) {
  constexpr const char* kOp = "scale_shift_act";
  const ActivationInfo info = check_activation(kOp, "y", y);
  check_pre_activation(kOp, y, info, scale, shift, residual, res_scale, res_shift);
  const c10::cuda::CUDAGuard guard(y.device());
  at::Tensor out = at::empty_like(y);  // same strides as y: same layout
  if (info.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = sm_count();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "scale_shift_act_cuda", [&] {
    const auto args = scale_shift_args<scalar_t>(y, scale, shift, residual, res_scale, res_shift, relu);
    for_each_chunk(info, [&](int64_t n0, int64_t n_chunk) {
      const auto a = args.from_sample(n0, info);
      scalar_t* out_p = sample_ptr(out.mutable_data_ptr<scalar_t>(), n0, info);
      const bool vec = elementwise_vec_ok<scalar_t>(info, pointer_alignment(out_p, a.y, a.residual),
                                                    pointer_alignment(a.scale, a.shift, a.res_scale, a.res_shift));
      launch_elementwise<scalar_t>(ScaleShiftActOp<scalar_t>{a, out_p}, vec, info, n_chunk, sms, stream);
    });
  });
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace resnet_fast

TORCH_LIBRARY_IMPL(resnet_fast, CUDA, m) { m.impl("scale_shift_act", &resnet_fast::cuda::scale_shift_act_cuda); }
