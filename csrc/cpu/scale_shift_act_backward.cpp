// Backward of scale_shift_act (CPU) in two passes over the activations: a reduction giving
// the per-(n, c) sums that the BatchNorm / SE gradient algebra needs (bn_backward_finalize
// turns them into coefficients), then an elementwise pass applying those coefficients.
//
// Math. With z = y * scale[n,c] + shift[n,c] + R recomputed from y (nothing saved but y),
//     g = grad_out * (z > 0)   (relu)     or     g = grad_out   (identity).
// Through y = x_hat / invstd + mean every factor of the BN backward but g and (y - mean) is
// constant over (h, w), so per-(n, c) sums suffice:
//     sum_g[n,c]   = sum_hw g
//     sum_g_y[n,c] = sum_hw g * (y - center[c])
//     sum_g_res[c] = sum_{n,hw} g * (residual - res_center[c])      (BN on the shortcut)
// and the gradients are affine in g and y per (n, c):
//     grad_y        = k_g[n,c] * g + k_0[n,c] + k_y[c] * (y - center[c])
//     grad_residual = res_k_g[c] * g + res_k_0[c] + res_k_r[c] * (residual - res_center[c])
//
// Bytes moved. reduce: reads grad_out and y (+ residual): 2-3 * N*C*HW*sizeof(y); writes
// 2*N*C (+ C) acc values (NHWC: also K doubles per channel per block of >= 32 rows).
// apply: reads grad_out and y (+ residual), writes grad_y (+ grad_residual): 3 to 5 times.
// Sums are acc vectors over at most 4096 values (NCHW) or one block of rows (NHWC), merged
// in double in a fixed order: deterministic. Kernels: scale_shift_act_kernel.h.
#include "common.h"

namespace resnet_fast::cpu {
namespace {

// Checks shared by both backward primitives: y, the forward's arguments, grad_out, center.
ArgChecker check_backward(const char* op, const Tensor& grad_out, const PreActArgs& args, const Tensor& center) {
  ArgChecker check(op, args.y);
  check.activation("grad_out", grad_out);
  check_pre_activation(check, args);
  check.per_channel("center", center);
  return check;
}

std::tuple<Tensor, Tensor, Tensor> scale_shift_act_backward_reduce_cpu(
    const Tensor& grad_out, const Tensor& y, const Tensor& scale, const Tensor& shift, const OptTensor& residual,
    const OptTensor& res_scale, const OptTensor& res_shift, bool relu, const Tensor& center,
    const OptTensor& res_center) {
  const PreActArgs args{y, scale, shift, residual, res_scale, res_shift, relu};
  const ArgChecker check = check_backward("resnet_fast::scale_shift_act_backward_reduce", grad_out, args, center);
  check.needs("res_center", given(res_center), "residual", given(residual));
  check.per_channel("res_center", res_center);
  const Geometry& g = check.geometry();
  const bool with_res = given(res_center);
  const auto options = y.options().dtype(check.acc_dtype());
  Tensor sum_g = at::empty({g.N, g.C}, options);
  Tensor sum_g_y = at::empty({g.N, g.C}, options);
  Tensor sum_g_res = at::empty({with_res ? g.C : 0}, options);

  const int64_t NC = g.N * g.C;
  std::vector<double> sums((with_res ? 3 : 2) * NC, 0.0);  // (K, N, C); sums over nothing are 0
  if (g.numel() > 0) kernels().backward_reduce(g, args, grad_out, center, res_center, sums.data(), nullptr);
  copy_from_double(sums.data(), sum_g);
  copy_from_double(sums.data() + NC, sum_g_y);
  if (with_res) copy_from_double(sum_over_n(sums.data() + 2 * NC, g.N, g.C).data(), sum_g_res);
  return {sum_g, sum_g_y, sum_g_res};
}

std::tuple<Tensor, Tensor> scale_shift_act_backward_apply_cpu(
    const Tensor& grad_out, const Tensor& y, const Tensor& scale, const Tensor& shift, const OptTensor& residual,
    const OptTensor& res_scale, const OptTensor& res_shift, bool relu, const Tensor& k_g, const Tensor& k_0,
    const Tensor& k_y, const Tensor& center, const OptTensor& res_k_g, const OptTensor& res_k_0,
    const OptTensor& res_k_r, const OptTensor& res_center) {
  const PreActArgs args{y, scale, shift, residual, res_scale, res_shift, relu};
  const ArgChecker check = check_backward("resnet_fast::scale_shift_act_backward_apply", grad_out, args, center);
  check.per_sample("k_g", k_g);
  check.per_sample("k_0", k_0);
  check.per_channel("k_y", k_y);
  const std::initializer_list<std::pair<const char*, const OptTensor*>> res_coefs = {
      {"res_k_g", &res_k_g}, {"res_k_0", &res_k_0}, {"res_k_r", &res_k_r}, {"res_center", &res_center}};
  check.all_or_none(res_coefs);
  check.needs("res_k_g", given(res_k_g), "residual", given(residual));
  for (const auto& [name, t] : res_coefs) check.per_channel(name, *t);

  const bool with_res = given(res_k_g);
  Tensor grad_y = at::empty_like(y);  // y's strides, so its memory format
  Tensor grad_residual = with_res ? at::empty_like(y) : at::empty({0}, y.options());
  if (y.numel() > 0) {
    const ApplyArgs coefs{k_g, k_0, k_y, center, res_k_g, res_k_0, res_k_r, res_center};
    kernels().backward_apply(check.geometry(), args, grad_out, coefs, grad_y, with_res ? &grad_residual : nullptr);
  }
  return {grad_y, grad_residual};
}

}  // namespace
}  // namespace resnet_fast::cpu

TORCH_LIBRARY_IMPL(resnet_fast, CPU, m) {
  m.impl("scale_shift_act_backward_reduce", &resnet_fast::cpu::scale_shift_act_backward_reduce_cpu);
  m.impl("scale_shift_act_backward_apply", &resnet_fast::cpu::scale_shift_act_backward_apply_cpu);
}
