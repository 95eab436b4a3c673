// bn_backward_finalize (CPU): the backward per-channel BatchNorm algebra, from the gradient
// sums of scale_shift_act_backward_reduce to the parameter gradients and the coefficients
// scale_shift_act_backward_apply takes (dy = k_g * dz + k_0 + k_y * (y - mean)):
//
//   S[c]  = sum_n sum_dz[n, c],  Sy[c] = sum_n sum_dz_y[n, c]   (rows added in n order; a (C,)
//                                                                 argument is already the total)
//   grad_weight[c] = Sy[c] * invstd[c],   grad_bias[c] = S[c]
//   a[c] = weight[c] * invstd[c]  (invstd without weight)
//   k_g[n, c] = a[c]
//   k_0[n, c] = -(a * S / count),  k_y[c] = -(a * invstd * invstd * Sy / count)   (training)
//   k_0 = k_y = 0                                                                  (eval)
//
// k_g and k_0 are (n, C) tables when n > 0, else (C,). The formulas are csrc/bn_algebra.h's,
// shared with the CUDA kernel.
#include "../bn_algebra.h"
#include "../finalize_args.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

namespace resnet_fast {
namespace cpu {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> bn_backward_finalize_cpu(
    const Tensor& sum_dz, const Tensor& sum_dz_y, const Tensor& invstd, const std::optional<Tensor>& weight,
    int64_t count, int64_t n, bool use_batch_stats) {
  const finalize::Checker check("resnet_fast::bn_backward_finalize", "invstd", invstd, c10::DeviceType::CPU);
  const finalize::SumTable s = check.sums("sum_dz", sum_dz);
  const finalize::SumTable sy = check.sums("sum_dz_y", sum_dz_y);
  const bn::Param w = check.param("weight", weight);
  check.non_negative("count", count);
  check.non_negative("n", n);
  const int64_t C = check.channels();
  const auto options = invstd.options();
  Tensor grad_weight = at::empty({C}, options);
  Tensor grad_bias = at::empty({C}, options);
  Tensor k_g = at::empty(finalize::table_shape(n, C), options);
  Tensor k_0 = at::empty(finalize::table_shape(n, C), options);
  Tensor k_y = at::empty({C}, options);
  AT_DISPATCH_FLOATING_TYPES(check.acc_dtype(), "bn_backward_finalize_cpu", [&] {
    const auto* s_data = static_cast<const scalar_t*>(s.data);
    const auto* sy_data = static_cast<const scalar_t*>(sy.data);
    const scalar_t* is_in = invstd.const_data_ptr<scalar_t>();
    const int64_t is_stride = invstd.stride(0);
    scalar_t* gw_out = grad_weight.mutable_data_ptr<scalar_t>();
    scalar_t* gb_out = grad_bias.mutable_data_ptr<scalar_t>();
    scalar_t* kg_out = k_g.mutable_data_ptr<scalar_t>();  // row 0
    scalar_t* k0_out = k_0.mutable_data_ptr<scalar_t>();
    scalar_t* ky_out = k_y.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t total = bn::sum_rows(s_data, s.rows, s.row_stride, s.col_stride, c);
      const scalar_t total_y = bn::sum_rows(sy_data, sy.rows, sy.row_stride, sy.col_stride, c);
      const scalar_t is = is_in[c * is_stride];
      const scalar_t a = bn::scale(is, w, c);
      gw_out[c] = bn::grad_weight(total_y, is);
      gb_out[c] = total;
      kg_out[c] = a;
      k0_out[c] = bn::k_0(a, total, count, use_batch_stats);
      ky_out[c] = bn::k_y(a, is, total_y, count, use_batch_stats);
    }
    for (int64_t row = 1; row < n; ++row) {  // the other rows of the (n, C) tables
      std::copy(kg_out, kg_out + C, kg_out + row * C);
      std::copy(k0_out, k0_out + C, k0_out + row * C);
    }
  });
  return {grad_weight, grad_bias, k_g, k_0, k_y};
}

}  // namespace
}  // namespace cpu
}  // namespace resnet_fast

TORCH_LIBRARY_IMPL(resnet_fast, CPU, m) {
  m.impl("bn_backward_finalize", &resnet_fast::cpu::bn_backward_finalize_cpu);
}
