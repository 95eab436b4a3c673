// scale_shift_act (CPU): the forward epilogue of every fused op, one elementwise pass.
//
//   out = act(y * scale[n,c] + shift[n,c] + R)
//   R   = residual * res_scale[c] + res_shift[c]   (res_scale given: BN of the downsample path)
//       | residual                                 (identity shortcut)
//       | 0
//   act = relu | identity
//
// Bytes moved: y read, residual read (when given), out written: 2 or 3 * N*C*HW*sizeof(y);
// the (N, C) and (C,) coefficient tables are a few KiB and stay in cache. Math in acc
// precision (float for half/bfloat16), rounded once on store. Kernel: scale_shift_act_kernel.h.
#include "common.h"

namespace resnet_fast::cpu {
namespace {

Tensor scale_shift_act_cpu(const Tensor& y, const Tensor& scale, const Tensor& shift, const OptTensor& residual,
                           const OptTensor& res_scale, const OptTensor& res_shift, bool relu) {
  const ArgChecker check("resnet_fast::scale_shift_act", y);
  const PreActArgs args{y, scale, shift, residual, res_scale, res_shift, relu};
  check_pre_activation(check, args);
  Tensor out = at::empty_like(y);  // y's strides (y is dense), so its memory format
  if (y.numel() > 0) kernels().scale_shift_act(check.geometry(), args, out);
  return out;
}

}  // namespace
}  // namespace resnet_fast::cpu

TORCH_LIBRARY_IMPL(resnet_fast, CPU, m) { m.impl("scale_shift_act", &resnet_fast::cpu::scale_shift_act_cpu); }
