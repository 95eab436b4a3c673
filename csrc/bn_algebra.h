// The per-channel BatchNorm algebra, written once for the C++ CPU kernels and the CUDA
// kernels (resnet_fast::bn_finalize and resnet_fast::bn_backward_finalize; their executable
// specification is resnet_fast/ops/primitives.py).
//
// Every function takes and returns values of the accumulation type T (float, or double for
// float64 statistics) and rounds once per operation, in the reference's order of operations,
// so the CPU and CUDA kernels give the same bits as each other and as the torch reference
// (except for the sums over samples, whose order torch chooses itself):
//   - host: plain operators; the extension is compiled with -ffp-contract=off, so no
//     a * b + c is contracted into a fused multiply-add (resnet_fast/_build_config.py);
//   - device: the _rn intrinsics, which nvcc never contracts and which are correctly rounded
//     whatever -use_fast_math / -prec-div / -prec-sqrt say (1/sqrt as two correctly rounded
//     operations, never rsqrt).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define RF_HOST_DEVICE __host__ __device__
#else
#define RF_HOST_DEVICE
#endif
#define RF_INLINE RF_HOST_DEVICE inline

namespace resnet_fast {
namespace bn {

// ----------------------------------------------------------------------------- one rounding each
#if defined(__CUDA_ARCH__)
RF_INLINE float add(float a, float b) { return __fadd_rn(a, b); }
RF_INLINE double add(double a, double b) { return __dadd_rn(a, b); }
RF_INLINE float sub(float a, float b) { return __fsub_rn(a, b); }
RF_INLINE double sub(double a, double b) { return __dsub_rn(a, b); }
RF_INLINE float mul(float a, float b) { return __fmul_rn(a, b); }
RF_INLINE double mul(double a, double b) { return __dmul_rn(a, b); }
RF_INLINE float div(float a, float b) { return __fdiv_rn(a, b); }
RF_INLINE double div(double a, double b) { return __ddiv_rn(a, b); }
RF_INLINE float sqrt_rn(float a) { return __fsqrt_rn(a); }
RF_INLINE double sqrt_rn(double a) { return __dsqrt_rn(a); }
#else
template <typename T>
RF_INLINE T add(T a, T b) { return a + b; }
template <typename T>
RF_INLINE T sub(T a, T b) { return a - b; }
template <typename T>
RF_INLINE T mul(T a, T b) { return a * b; }
template <typename T>
RF_INLINE T div(T a, T b) { return a / b; }
template <typename T>
RF_INLINE T sqrt_rn(T a) { return std::sqrt(a); }  // IEEE: correctly rounded
#endif

// ----------------------------------------------------------------------------- parameters
// A BatchNorm weight or bias as the kernels read it: absent, or (C,) of any floating dtype
// with any stride, read in T (torch's weight.to(T): exact widening, or round to nearest
// for float64 parameters of float32 statistics).
enum class ParamType : int { kAbsent = 0, kHalf, kBFloat16, kFloat, kDouble };

struct Param {
  const void* data;  // nullptr when absent
  int64_t stride;    // elements between channels
  ParamType type;

  RF_INLINE bool given() const { return type != ParamType::kAbsent; }

  template <typename T>
  RF_INLINE T load(int64_t c) const {
    const int64_t i = c * stride;
    switch (type) {
      case ParamType::kHalf: return static_cast<T>(static_cast<float>(static_cast<const c10::Half*>(data)[i]));
      case ParamType::kBFloat16:
        return static_cast<T>(static_cast<float>(static_cast<const c10::BFloat16*>(data)[i]));
      case ParamType::kFloat: return static_cast<T>(static_cast<const float*>(data)[i]);
      case ParamType::kDouble: return static_cast<T>(static_cast<const double*>(data)[i]);
      default: return T(0);
    }
  }
};

// ----------------------------------------------------------------------------- forward
// invstd = 1 / sqrt(var + eps) (torch: 1.0 / torch.sqrt(var + eps), eps rounded to T first).
template <typename T>
RF_INLINE T invstd(T var, T eps) {
  return div(T(1), sqrt_rn(add(var, eps)));
}

// The affine pair of bn(y) = a * y + c0:
//   a  = weight * invstd             (invstd without weight)
//   c0 = bias - mean * a             (-(mean * a) without bias)
template <typename T>
RF_INLINE T scale(T invstd, const Param& weight, int64_t c) {
  return weight.given() ? mul(weight.load<T>(c), invstd) : invstd;
}

template <typename T>
RF_INLINE T shift(T mean, T a, const Param& bias, int64_t c) {
  const T mean_a = mul(mean, a);
  return bias.given() ? sub(bias.load<T>(c), mean_a) : -mean_a;
}

// count / max(count - 1, 1): turns the biased variance of `count` values into the unbiased
// one that updates running_var. In double, as Python computes it; the kernels round it to
// T once and multiply (torch: var * python_float).
RF_INLINE double unbiased_factor(int64_t count) {
  const int64_t denominator = count - 1 > 1 ? count - 1 : 1;
  return static_cast<double>(count) / static_cast<double>(denominator);
}

template <typename T>
RF_INLINE T var_update(T var, double factor) {
  return mul(var, static_cast<T>(factor));
}

// ----------------------------------------------------------------------------- backward
// From sum_dz = sum dz and sum_dz_y = sum dz * (y - mean) of a channel (dz: the gradient at
// bn's output; count values per channel, all ranks' under SyncBN), with a = scale(...):
//   grad_weight = sum_dz_y * invstd,   grad_bias = sum_dz,
//   dy = k_g * dz + k_0 + k_y * (y - mean), where in training (batch statistics)
//     k_g = a,   k_0 = -(a * sum_dz / count),   k_y = -(a * invstd * invstd * sum_dz_y / count)
//   (d x_hat / d mean and d x_hat / d var folded in), and in eval k_0 = k_y = 0 (the running
//   statistics are constants). Products and quotients left to right, as the reference.
template <typename T>
RF_INLINE T grad_weight(T sum_dz_y, T invstd) {
  return mul(sum_dz_y, invstd);
}

template <typename T>
RF_INLINE T k_0(T a, T sum_dz, int64_t count, bool use_batch_stats) {
  return use_batch_stats ? -div(mul(a, sum_dz), static_cast<T>(count)) : T(0);
}

template <typename T>
RF_INLINE T k_y(T a, T invstd, T sum_dz_y, int64_t count, bool use_batch_stats) {
  return use_batch_stats ? -div(mul(mul(mul(a, invstd), invstd), sum_dz_y), static_cast<T>(count)) : T(0);
}

// A per-channel total from per-sample sums: rows 0..N-1 of column c of an (N, C) table with
// strides (row_stride, col_stride), added in row order (0 for N = 0). A (C,) total is the
// case N = 1, read as it is.
template <typename T>
RF_INLINE T sum_rows(const T* table, int64_t N, int64_t row_stride, int64_t col_stride, int64_t c) {
  if (N == 0) return T(0);
  const T* p = table + c * col_stride;
  T total = p[0];
#if defined(__CUDA_ARCH__)
#pragma unroll 8  // loads issued ahead of the (sequential, dependent) adds
#endif
  for (int64_t n = 1; n < N; ++n) total = add(total, p[n * row_stride]);
  return total;
}

}  // namespace bn
}  // namespace resnet_fast
