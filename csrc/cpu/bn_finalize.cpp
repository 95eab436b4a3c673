// bn_finalize (CPU): the forward per-channel BatchNorm algebra, from the batch (or running)
// statistics to what scale_shift_act and the running-statistics update take:
//
//   invstd[c]     = 1 / sqrt(var[c] + eps)
//   var_update[c] = var[c] * count / max(count - 1, 1)    (unbiased; updates running_var)
//   scale[n, c]   = a[c]  = weight[c] * invstd[c]          (invstd without weight)
//   shift[n, c]   = c0[c] = bias[c] - mean[c] * a[c]       (-(mean * a) without bias)
//
// scale and shift are (n, C) tables when n > 0 (the same row n times), else (C,). The
// formulas are csrc/bn_algebra.h's, shared with the CUDA kernel; C values, so one plain
// loop (microseconds even at C = 2048).
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

std::tuple<Tensor, Tensor, Tensor, Tensor> bn_finalize_cpu(const Tensor& mean, const Tensor& var,
                                                           const std::optional<Tensor>& weight,
                                                           const std::optional<Tensor>& bias, double eps,
                                                           int64_t count, int64_t n) {
  const finalize::Checker check("resnet_fast::bn_finalize", "mean", mean, c10::DeviceType::CPU);
  check.per_channel("var", var);
  const bn::Param w = check.param("weight", weight);
  const bn::Param b = check.param("bias", bias);
  check.non_negative("count", count);
  check.non_negative("n", n);
  const int64_t C = check.channels();
  const auto options = mean.options();
  Tensor invstd = at::empty({C}, options);
  Tensor var_update = at::empty({C}, options);
  Tensor scale = at::empty(finalize::table_shape(n, C), options);
  Tensor shift = at::empty(finalize::table_shape(n, C), options);
  const double factor = bn::unbiased_factor(count);
  AT_DISPATCH_FLOATING_TYPES(check.acc_dtype(), "bn_finalize_cpu", [&] {
    const scalar_t* m = mean.const_data_ptr<scalar_t>();
    const scalar_t* v = var.const_data_ptr<scalar_t>();
    const int64_t ms = mean.stride(0), vs = var.stride(0);
    const scalar_t eps_t = static_cast<scalar_t>(eps);  // torch rounds the Python float to the tensor's dtype
    scalar_t* is_out = invstd.mutable_data_ptr<scalar_t>();
    scalar_t* vu_out = var_update.mutable_data_ptr<scalar_t>();
    scalar_t* a_out = scale.mutable_data_ptr<scalar_t>();  // row 0
    scalar_t* c0_out = shift.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t is = bn::invstd(v[c * vs], eps_t);
      const scalar_t a = bn::scale(is, w, c);
      is_out[c] = is;
      vu_out[c] = bn::var_update(v[c * vs], factor);
      a_out[c] = a;
      c0_out[c] = bn::shift(m[c * ms], a, b, c);
    }
    for (int64_t row = 1; row < n; ++row) {  // the other rows of the (n, C) tables
      std::copy(a_out, a_out + C, a_out + row * C);
      std::copy(c0_out, c0_out + C, c0_out + row * C);
    }
  });
  return {invstd, var_update, scale, shift};
}

}  // namespace
}  // namespace cpu
}  // namespace resnet_fast

TORCH_LIBRARY_IMPL(resnet_fast, CPU, m) { m.impl("bn_finalize", &resnet_fast::cpu::bn_finalize_cpu); }
