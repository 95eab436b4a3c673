// The Python module of the compiled library: `import resnet_fast._C` loads this shared
// object, whose static initializers register the kernels of every file under csrc/cpu and
// csrc/cuda with TORCH_LIBRARY_IMPL(resnet_fast, CPU|CUDA, m). The module itself is empty
// (no pybind: the kernels go through the dispatcher, so torch.compile sees them).
//
// The schemas are declared once, in Python: resnet_fast/ops/primitives.py (SCHEMAS, with the
// executable specification of each primitive), defined by resnet_fast/ops/_registration.py
// before it loads this library. Conventions shared by the primitives:
//   y, residual, grad_out: (N, C, H, W), contiguous or channels_last, same dtype.
//   "acc" dtype: float64 for float64 inputs, float32 otherwise (fp16/bf16/fp32).
//   Per-(n, c) coefficients are (N, C) contiguous acc tensors; per-channel ones (C,).
//   Outputs keep the memory format of y.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
