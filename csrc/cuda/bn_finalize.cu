// resnet_fast::bn_finalize on CUDA: the forward per-channel BatchNorm algebra (the formulas
// and their rounding: csrc/bn_algebra.h, shared with the CPU kernel, so both give the same
// bits):
//
//   invstd[c]     = 1 / sqrt(var[c] + eps)
//   var_update[c] = var[c] * count / max(count - 1, 1)
//   scale[n, c]   = a[c]  = weight[c] * invstd[c]          (invstd without weight)
//   shift[n, c]   = c0[c] = bias[c] - mean[c] * a[c]       (-(mean * a) without bias)
//
// One launch, one thread per (n, c) entry of the (n, C) tables (per c when n == 0): each
// thread evaluates its channel's formulas (a few flops against two coalesced stores), and the
// threads of row 0 also write invstd and var_update. Reads 2-4 C values, writes 2 n C + 2 C.
#include "../bn_algebra.h"
#include "../finalize_args.h"
#include "common.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

namespace resnet_fast {
namespace cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads) _bn_finalize_kernel(
    const T* __restrict__ mean, int64_t mean_stride,  // (C,) batch or running mean
    const T* __restrict__ var, int64_t var_stride,    // (C,) biased variance
    bn::Param weight,                                 // (C,) any floating dtype, or absent
    bn::Param bias,                                   // (C,) any floating dtype, or absent
    T eps,                                            // already rounded to T, as torch does
    double factor,                                    // bn::unbiased_factor(count)
    int64_t C,                                        // channels
    int64_t rows,                                     // rows of scale/shift (1 for (C,) outputs)
    T* __restrict__ invstd,                           // (C,) out
    T* __restrict__ var_update,                       // (C,) out
    T* __restrict__ scale,                            // (rows, C) out, contiguous
    T* __restrict__ shift) {                          // (rows, C) out, contiguous
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * C) return;
  const int64_t c = i % C;
  const T v = var[c * var_stride];
  const T is = bn::invstd(v, eps);
  const T a = bn::scale(is, weight, c);
  scale[i] = a;
  shift[i] = bn::shift(mean[c * mean_stride], a, bias, c);
  if (i < C) {  // row 0
    invstd[c] = is;
    var_update[c] = bn::var_update(v, factor);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_finalize_cuda(
    const at::Tensor& mean, const at::Tensor& var, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, int64_t count, int64_t n) {
  const finalize::Checker check("resnet_fast::bn_finalize", "mean", mean, c10::DeviceType::CUDA);
  check.per_channel("var", var);
  const bn::Param w = check.param("weight", weight);
  const bn::Param b = check.param("bias", bias);
  check.non_negative("count", count);
  check.non_negative("n", n);
  const c10::cuda::CUDAGuard guard(mean.device());
  const int64_t C = check.channels();
  const auto options = mean.options();
  at::Tensor invstd = at::empty({C}, options);
  at::Tensor var_update = at::empty({C}, options);
  at::Tensor scale = at::empty(finalize::table_shape(n, C), options);
  at::Tensor shift = at::empty(finalize::table_shape(n, C), options);
  const int64_t rows = n > 0 ? n : 1;
  const int64_t total = rows * C;
  if (total == 0) return {invstd, var_update, scale, shift};
  const int64_t blocks = ceil_div(total, static_cast<int64_t>(kThreads));
  TORCH_CHECK(blocks <= INT32_MAX, "resnet_fast::bn_finalize: n * C = ", total, " is too large");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(check.acc_dtype(), "bn_finalize_cuda", [&] {
    _bn_finalize_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        mean.const_data_ptr<scalar_t>(), mean.stride(0), var.const_data_ptr<scalar_t>(), var.stride(0), w, b,
        static_cast<scalar_t>(eps), bn::unbiased_factor(count), C, rows, invstd.mutable_data_ptr<scalar_t>(),
        var_update.mutable_data_ptr<scalar_t>(), scale.mutable_data_ptr<scalar_t>(),
        shift.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {invstd, var_update, scale, shift};
}

}  // namespace
}  // namespace cuda
}  // namespace resnet_fast

TORCH_LIBRARY_IMPL(resnet_fast, CUDA, m) { m.impl("bn_finalize", &resnet_fast::cuda::bn_finalize_cuda); }
