// Schemas of the resnet_fast kernel primitives, declared once for every backend.
//
// The fused user-level ops (conv_bn_relu, bn_add_relu, squeeze_excite, bn_relu) are
// registered from Python (resnet_fast/ops/) on top of these four primitives; each
// backend (C++ CPU in csrc/cpu, CUDA in csrc/cuda, Triton, torch reference) implements
// exactly these semantics. resnet_fast/ops/primitives.py holds the executable
// specification (the torch reference implementation) and the same schemas for when
// this library is not loaded.
//
// Conventions shared by all four:
//   y, residual, grad_out: (N, C, H, W), contiguous or channels_last, same dtype.
//   "acc" dtype: float64 for float64 inputs, float32 otherwise (fp16/bf16/fp32).
//   Per-(n, c) coefficients are (N, C) contiguous acc tensors; per-channel ones (C,).
//   Outputs keep the memory format of y.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import resnet_fast._C` loads this shared object, whose static initializers register
// the ops below; the Python module itself is empty (no pybind: ops go through the
// dispatcher so torch.compile sees them).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(resnet_fast, m) {
  // Per-channel batch statistics in one pass (Welford per (n, c) plane, Chan merge over n):
  //   mean (C,), biased var (C,), sample_mean (N, C) = mean over (H, W).
  m.def("bn_stats(Tensor y) -> (Tensor mean, Tensor var, Tensor sample_mean)");
  // out = act(y * scale[n,c] + shift[n,c] + R), with
  //   R = residual * res_scale[c] + res_shift[c]  when res_scale is given,
  //       residual                              when only residual is given, else 0;
  //   act = relu when relu else identity.
  m.def(
      "scale_shift_act(Tensor y, Tensor scale, Tensor shift, Tensor? residual, "
      "Tensor? res_scale, Tensor? res_shift, bool relu) -> Tensor");
  // g = grad_out * (z > 0) when relu else grad_out (z: the pre-activation above);
  //   sum_g (N, C)   = sum_hw g
  //   sum_g_y (N, C) = sum_hw g * (y - center[c])
  //   sum_g_res (C,) = sum_{n,hw} g * (residual - res_center[c])  (empty when no res_center)
  m.def(
      "scale_shift_act_backward_reduce(Tensor grad_out, Tensor y, Tensor scale, Tensor shift, "
      "Tensor? residual, Tensor? res_scale, Tensor? res_shift, bool relu, Tensor center, "
      "Tensor? res_center) -> (Tensor sum_g, Tensor sum_g_y, Tensor sum_g_res)");
  // With g as above:
  //   grad_y        = k_g[n,c] * g + k_0[n,c] + k_y[c] * (y - center[c])
  //   grad_residual = res_k_g[c] * g + res_k_0[c] + res_k_r[c] * (residual - res_center[c])
  //                   (empty when res_k_g is not given)
  m.def(
      "scale_shift_act_backward_apply(Tensor grad_out, Tensor y, Tensor scale, Tensor shift, "
      "Tensor? residual, Tensor? res_scale, Tensor? res_shift, bool relu, Tensor k_g, "
      "Tensor k_0, Tensor k_y, Tensor center, Tensor? res_k_g, Tensor? res_k_0, "
      "Tensor? res_k_r, Tensor? res_center) -> (Tensor grad_y, Tensor grad_residual)");
}
