// resnet_fast::bn_backward_finalize on CUDA: the backward per-channel BatchNorm algebra (the
// formulas and their rounding: csrc/bn_algebra.h, shared with the CPU kernel, so both give
// the same bits, sums included: rows are added in n order by one thread):
//
//   S[c] = sum_n sum_dz[n, c],  Sy[c] = sum_n sum_dz_y[n, c]   ((C,) arguments: the totals)
//   grad_weight = Sy * invstd,  grad_bias = S,  a = weight * invstd (invstd without weight)
//   k_g[n, c] = a,  k_0[n, c] = -(a * S / count),  k_y[c] = -(a * invstd^2 * Sy / count)
//   (k_0 = k_y = 0 in eval)
//
// One launch, one thread per channel: the sums over n must run in order for determinism and
// for the CPU kernel's bits, so a channel's rows belong to one thread; a warp reads 32
// consecutive channels of a row (coalesced) and writes the k_g / k_0 rows the same way.
// Cost: N dependent adds per thread (loads unrolled 8 ahead) and 2 n C + 3 C stores, a few
// microseconds at N = 256.
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

constexpr int kFinalizeThreads = 128;  // channels per block: C = 64 still fills two warps

template <typename T>
__global__ void __launch_bounds__(kFinalizeThreads) _bn_backward_finalize_kernel(
    finalize::SumTable sum_dz,                       // (N, C) per-sample sums or (C,) totals
    finalize::SumTable sum_dz_y,                     // likewise
    const T* __restrict__ invstd, int64_t invstd_stride,  // (C,)
    bn::Param weight,                                // (C,) any floating dtype, or absent
    int64_t count,                                   // values per channel (all ranks')
    bool use_batch_stats,                            // training: k_0, k_y; eval: 0
    int64_t C,                                       // channels
    int64_t rows,                                    // rows of k_g / k_0 (1 for (C,) outputs)
    T* __restrict__ grad_weight,                     // (C,) out
    T* __restrict__ grad_bias,                       // (C,) out
    T* __restrict__ k_g,                             // (rows, C) out, contiguous
    T* __restrict__ k_0,                             // (rows, C) out, contiguous
    T* __restrict__ k_y) {                           // (C,) out
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const T total = bn::sum_rows(static_cast<const T*>(sum_dz.data), sum_dz.rows, sum_dz.row_stride,
                               sum_dz.col_stride, c);
  const T total_y = bn::sum_rows(static_cast<const T*>(sum_dz_y.data), sum_dz_y.rows, sum_dz_y.row_stride,
                                 sum_dz_y.col_stride, c);
  const T is = invstd[c * invstd_stride];
  const T a = bn::scale(is, weight, c);
  const T k0 = bn::k_0(a, total, count, use_batch_stats);
  grad_weight[c] = bn::grad_weight(total_y, is);
  grad_bias[c] = total;
  k_y[c] = bn::k_y(a, is, total_y, count, use_batch_stats);
  for (int64_t row = 0; row < rows; ++row) {
    k_g[row * C + c] = a;
    k_0[row * C + c] = k0;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_backward_finalize_cuda(
    const at::Tensor& sum_dz, const at::Tensor& sum_dz_y, const at::Tensor& invstd,
    const std::optional<at::Tensor>& weight, int64_t count, int64_t n, bool use_batch_stats) {
  const finalize::Checker check("resnet_fast::bn_backward_finalize", "invstd", invstd, c10::DeviceType::CUDA);
  const finalize::SumTable s = check.sums("sum_dz", sum_dz);
  const finalize::SumTable sy = check.sums("sum_dz_y", sum_dz_y);
  const bn::Param w = check.param("weight", weight);
  check.non_negative("count", count);
  check.non_negative("n", n);
  const c10::cuda::CUDAGuard guard(invstd.device());
  const int64_t C = check.channels();
  const auto options = invstd.options();
  at::Tensor grad_weight = at::empty({C}, options);
  at::Tensor grad_bias = at::empty({C}, options);
  at::Tensor k_g = at::empty(finalize::table_shape(n, C), options);
  at::Tensor k_0 = at::empty(finalize::table_shape(n, C), options);
  at::Tensor k_y = at::empty({C}, options);
  if (C == 0) return {grad_weight, grad_bias, k_g, k_0, k_y};
  const int64_t rows = n > 0 ? n : 1;
  const int64_t blocks = ceil_div(C, static_cast<int64_t>(kFinalizeThreads));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(check.acc_dtype(), "bn_backward_finalize_cuda", [&] {
    _bn_backward_finalize_kernel<scalar_t><<<static_cast<unsigned>(blocks), kFinalizeThreads, 0, stream>>>(
        s, sy, invstd.const_data_ptr<scalar_t>(), invstd.stride(0), w, count, use_batch_stats, C, rows,
        grad_weight.mutable_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>(),
        k_g.mutable_data_ptr<scalar_t>(), k_0.mutable_data_ptr<scalar_t>(), k_y.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_weight, grad_bias, k_g, k_0, k_y};
}

}  // namespace
}  // namespace cuda
}  // namespace resnet_fast

TORCH_LIBRARY_IMPL(resnet_fast, CUDA, m) {
  m.impl("bn_backward_finalize", &resnet_fast::cuda::bn_backward_finalize_cuda);
}
