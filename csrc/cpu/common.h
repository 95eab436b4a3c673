// Shared, capability-neutral pieces of the CPU kernels: argument checks, the geometry of an
// activation, and the table of vectorized kernels (see vec.h for the vector code).
//
// Layouts. An activation (N, C, H, W) is either
//   NCHW: N*C planes of HW contiguous values; a plane has one (n, c), so its coefficients
//         are scalars broadcast over the vector;
//   NHWC (channels_last): N*HW rows of C contiguous values; the coefficients of a vector
//         are C-contiguous slices of the (N, C) / (C,) tables.
// Either way the kernels vectorize along the contiguous dimension. With H*W == 1 both
// layouts are the same bytes, and the NHWC loops (vectorized over C) are used.
//
// Files. Each activation primitive has an op file (<op>.cpp: checks, outputs, registration)
// and a kernel header (<op>_kernel.h: the vector loops). The kernel headers are compiled
// twice, by kernels_generic.cpp (the build's baseline ISA) and kernels_avx2.cpp (x86-64
// AVX2), and kernels() picks, once per process, the set of torch's own CPU capability
// (ATEN_CPU_CAPABILITY included): AVX2 where it is AVX2 or AVX512, else generic. Both give
// the same results bit for bit. The per-channel finalize primitives (bn_finalize.cpp,
// bn_backward_finalize.cpp) are plain loops over C on ../bn_algebra.h, shared with CUDA.
// Outputs are plain at::empty / at::empty_like tensors from torch's allocator.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <optional>
#include <utility>
#include <vector>

namespace resnet_fast::cpu {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

inline bool given(const OptTensor& t) { return t.has_value() && t->defined(); }

template <typename T>
inline const T* data_or_null(const OptTensor& t) {
  return given(t) ? t->const_data_ptr<T>() : nullptr;
}

// ----------------------------------------------------------------------------- shapes and checks
struct Geometry {
  int64_t N, C, HW;
  bool channels_last;  // true: NHWC loops (C contiguous); false: NCHW loops (HW contiguous)
  int64_t numel() const { return N * C * HW; }
};

// Validates the arguments of one primitive against its activation y; every message names the
// op and the argument. The constructor checks y itself.
class ArgChecker {
 public:
  ArgChecker(const char* op, const Tensor& y);

  const Geometry& geometry() const { return geo_; }
  at::ScalarType acc_dtype() const { return acc_; }  // float64 for float64 y, else float32

  // Same shape, dtype, device and memory format as y.
  void activation(const char* name, const Tensor& t) const;
  void activation(const char* name, const OptTensor& t) const;
  // (N, C) contiguous coefficients in the acc dtype.
  void per_sample(const char* name, const Tensor& t) const;
  // (C,) coefficients in the acc dtype (optional ones only when given).
  void per_channel(const char* name, const Tensor& t) const;
  void per_channel(const char* name, const OptTensor& t) const;
  // The optional arguments are either all given or all absent.
  void all_or_none(std::initializer_list<std::pair<const char*, const OptTensor*>> args) const;
  // When `name` is given, `needed_name` must be given too.
  void needs(const char* name, bool name_given, const char* needed_name, bool needed_given) const;

 private:
  void coefficient(const char* name, const Tensor& t, at::IntArrayRef expected, const char* what) const;

  const char* op_;
  const Tensor& y_;
  Geometry geo_;
  at::ScalarType acc_;
};

// The arguments defining the pre-activation z = y * scale + shift + R of the three
// elementwise primitives (checked by check_pre_activation).
struct PreActArgs {
  const Tensor& y;
  const Tensor& scale;          // (N, C)
  const Tensor& shift;          // (N, C)
  const OptTensor& residual;    // like y
  const OptTensor& res_scale;   // (C,), with res_shift
  const OptTensor& res_shift;   // (C,)
  bool relu;
};

// scale/shift (N, C); residual like y; res_scale/res_shift (C,), together, only with a residual.
void check_pre_activation(const ArgChecker& check, const PreActArgs& args);

// The coefficients of scale_shift_act_backward_apply (see its op file).
struct ApplyArgs {
  const Tensor& k_g;             // (N, C)
  const Tensor& k_0;             // (N, C)
  const Tensor& k_y;             // (C,)
  const Tensor& center;          // (C,)
  const OptTensor& res_k_g;      // (C,) all four or none
  const OptTensor& res_k_0;
  const OptTensor& res_k_r;
  const OptTensor& res_center;
};

// ----------------------------------------------------------------------------- kernel table
// The vector loops, one set per instruction set. Outputs are preallocated by the op files;
// per-(n, c) reductions come back in double, (K, N, C) row-major.
struct Kernels {
  // mean_nc, m2_nc: per-(n, c) mean and sum of squared deviations over (h, w).
  void (*bn_stats)(const Geometry& g, const Tensor& y, double* mean_nc, double* m2_nc);
  void (*scale_shift_act)(const Geometry& g, const PreActArgs& args, const Tensor& out);
  // sums: (K, N, C) with K = 3 when res_center is given, else 2. masked_grad (like y, or
  // nullptr): receives g = grad_out * (z > 0), the gradient of a plain residual.
  void (*backward_reduce)(const Geometry& g, const PreActArgs& args, const Tensor& grad_out, const Tensor& center,
                          const OptTensor& res_center, double* sums, const Tensor* masked_grad);
  // grad_residual: nullptr when res_k_g is absent.
  void (*backward_apply)(const Geometry& g, const PreActArgs& args, const Tensor& grad_out, const ApplyArgs& coefs,
                         const Tensor& grad_y, const Tensor* grad_residual);
};

extern const Kernels kGenericKernels;  // kernels_generic.cpp
extern const Kernels* const kAvx2Kernels;  // kernels_avx2.cpp; nullptr where not built (non-x86)

// The set in use: AVX2 where torch's own capability is AVX2 or AVX512, else generic.
const Kernels& kernels();

// Batch statistics of a non-empty y (bn_stats.cpp): per-channel mean and biased variance (C,),
// per-(n, c) mean (N, C), all in double; the channels combine their N equal-count groups
// exactly, in a fixed order.
void batch_moments(const Geometry& g, const Tensor& y, double* mean, double* var, double* mean_nc);

// Sums over n of an (N, C) row-major double block, per channel, added in n order.
std::vector<double> sum_over_n(const double* nc, int64_t N, int64_t C);

// Copies a double buffer into an acc-dtype tensor of the same number of elements.
void copy_from_double(const double* src, const Tensor& dst);

}  // namespace resnet_fast::cpu
