// Shared by the CUDA kernels of resnet_fast: types, vector memory access, the
// arithmetic that mirrors eager PyTorch's rounding, Welford/Chan merges, and the host
// helpers (argument checks, batch chunking, launch sizing) declared here and defined in
// common.cu.
//
// Indexing: every kernel indexes one "chunk" of the batch with 32-bit unsigned offsets
// (a chunk holds at most kMaxChunkElements elements); the host walks the batch in chunks
// of whole samples, offsetting every per-sample pointer (for_each_chunk). Both layouts
// keep a sample contiguous, so a chunk is a contiguous slice of every activation.
//   NCHW: element (n, c, hw) at (n*C + c)*HW + hw  -> nc = idx / HW, c = nc % C
//   NHWC: element (n, c, hw) at (n*HW + hw)*C + c  -> c = idx % C, n = idx / (HW*C)
#pragma once

#include <ATen/AccumulateType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <optional>
#include <type_traits>

#include "launch_plan.h"

namespace resnet_fast {
namespace cuda {

// kThreads, kWarpSize, kMaxChunkElements, Layout, ActivationInfo: launch_plan.h.

template <typename scalar_t>
using acc_type = at::acc_type<scalar_t, /*is_cuda=*/true>;  // double for double, else float

// Elements per 16-byte access: 8 for half/bfloat16, 4 for float, 2 for double.
template <typename scalar_t>
constexpr int vec_width() {
  return 16 / static_cast<int>(sizeof(scalar_t));
}

template <int V>
using IntC = std::integral_constant<int, V>;

// How the residual enters the pre-activation z = y*scale + shift + R.
enum class ResMode : int {
  kNone = 0,    // R = 0
  kPlain = 1,   // R = residual
  kAffine = 2,  // R = residual*res_scale[c] + res_shift[c]
};

// ----------------------------------------------------------------------------- arithmetic
// One rounding per operation, as eager PyTorch computes `y.to(acc) * scale + shift`: no
// FMA contraction, so the ReLU mask recomputed in backward equals the forward one and the
// elementwise results equal the reference bit for bit.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }

// z = y*scale + shift (+ residual, affine or not), rounded like the reference.
template <typename acc_t>
__device__ __forceinline__ acc_t pre_activation(acc_t y, acc_t scale, acc_t shift, acc_t r, acc_t res_scale,
                                                acc_t res_shift, ResMode mode) {
  const acc_t z = add_rn(mul_rn(y, scale), shift);
  if (mode == ResMode::kNone) return z;
  if (mode == ResMode::kAffine) r = add_rn(mul_rn(r, res_scale), res_shift);
  return add_rn(z, r);
}

// torch.relu: NaN propagates (NaN < 0 is false).
template <typename acc_t>
__device__ __forceinline__ acc_t relu(acc_t z) {
  return z < acc_t(0) ? acc_t(0) : z;
}

// eager's relu backward (threshold_backward: z <= 0 ? 0 : g): a NaN z passes g.
template <typename acc_t>
__device__ __forceinline__ acc_t relu_mask(acc_t z, acc_t g) {
  return z <= acc_t(0) ? acc_t(0) : g;
}

// ----------------------------------------------------------------------------- memory access
// V elements accessed as one aligned unit (16 bytes when V == vec_width).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

template <int V, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& x) {
  *reinterpret_cast<Pack<T, V>*>(p) = x;
}

// V consecutive activation values widened to acc_t.
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_acc(const scalar_t* p, acc_t (&out)[V]) {
  const Pack<scalar_t, V> x = load_pack<V>(p);
#pragma unroll
  for (int j = 0; j < V; ++j) out[j] = static_cast<acc_t>(x.v[j]);
}

// V values narrowed to scalar_t (round to nearest even, as Tensor.to does) and stored.
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_acc(scalar_t* p, const acc_t (&in)[V]) {
  Pack<scalar_t, V> x;
#pragma unroll
  for (int j = 0; j < V; ++j) x.v[j] = static_cast<scalar_t>(in[j]);
  store_pack<V>(p, x);
}

// V consecutive coefficients (acc_t): 16-byte loads when V*sizeof(acc_t) is a multiple of
// 16 (the caller guarantees the alignment), scalar loads otherwise.
template <int V, typename acc_t>
__device__ __forceinline__ void load_coef(const acc_t* p, acc_t (&out)[V]) {
  constexpr int kPer = 16 / static_cast<int>(sizeof(acc_t));
  if constexpr (V % kPer == 0) {
#pragma unroll
    for (int q = 0; q < V / kPer; ++q) {
      const Pack<acc_t, kPer> x = load_pack<kPer>(p + q * kPer);
#pragma unroll
      for (int j = 0; j < kPer; ++j) out[q * kPer + j] = x.v[j];
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = p[j];
  }
}

// ----------------------------------------------------------------------------- Welford / Chan
// Count, mean and sum of squared deviations (M2) of a set of values.
template <typename acc_t, typename count_t>
struct Moments {
  count_t count;
  acc_t mean;
  acc_t m2;
};

// Chan et al.: a <- a merged with b. r = nb/n, w = na*nb/n are shared by every channel of
// a thread (same counts), so callers holding V channels compute them once.
template <typename acc_t>
__device__ __forceinline__ void chan_update(acc_t& mean, acc_t& m2, acc_t mean_b, acc_t m2_b, acc_t r, acc_t w) {
  const acc_t delta = mean_b - mean;
  mean += delta * r;
  m2 += m2_b + delta * delta * w;
}

template <typename acc_t, typename count_t>
__device__ __forceinline__ void chan_merge(Moments<acc_t, count_t>& a, const Moments<acc_t, count_t>& b) {
  if (b.count == 0) return;
  if (a.count == 0) {
    a = b;
    return;
  }
  const count_t n = a.count + b.count;
  const acc_t r = static_cast<acc_t>(b.count) / static_cast<acc_t>(n);
  chan_update(a.mean, a.m2, b.mean, b.m2, r, static_cast<acc_t>(a.count) * r);
  a.count = n;
}

// Mean and M2 of the first k of B values (two passes over registers: exact centering).
template <int B, typename acc_t>
__device__ __forceinline__ void batch_moments(const acc_t (&x)[B], int k, acc_t inv_k, acc_t& mean, acc_t& m2) {
  acc_t s = 0;
#pragma unroll
  for (int i = 0; i < B; ++i) s += i < k ? x[i] : acc_t(0);
  mean = s * inv_k;
  m2 = 0;
#pragma unroll
  for (int i = 0; i < B; ++i) {
    const acc_t d = x[i] - mean;
    m2 += i < k ? d * d : acc_t(0);
  }
}

// ----------------------------------------------------------------------------- host helpers
// p advanced to sample n0 of an activation (nullptr stays nullptr).
template <typename T>
T* sample_ptr(T* p, int64_t n0, const ActivationInfo& info) {
  return p == nullptr ? nullptr : p + sample_offset(info, n0);
}
// p advanced to row n0 of an (N, C) coefficient.
template <typename T>
T* nc_ptr(T* p, int64_t n0, const ActivationInfo& info) {
  return p == nullptr ? nullptr : p + nc_offset(info, n0);
}

// The operands of z = y*scale[n,c] + shift[n,c] + R and out = act(z), common to the three
// scale_shift_act primitives.
template <typename scalar_t>
struct ScaleShiftArgs {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* __restrict__ y;         // (N, C, H, W)
  const scalar_t* __restrict__ residual;  // like y, or nullptr (mode kNone)
  const acc_t* __restrict__ scale;        // (N, C)
  const acc_t* __restrict__ shift;        // (N, C)
  const acc_t* __restrict__ res_scale;    // (C,), or nullptr unless mode kAffine
  const acc_t* __restrict__ res_shift;    // (C,), or nullptr unless mode kAffine
  ResMode mode;
  bool relu;

  // The same operands seen from sample n0 on (the start of a chunk).
  ScaleShiftArgs from_sample(int64_t n0, const ActivationInfo& info) const {
    ScaleShiftArgs a = *this;
    a.y = sample_ptr(y, n0, info);
    a.residual = sample_ptr(residual, n0, info);
    a.scale = nc_ptr(scale, n0, info);
    a.shift = nc_ptr(shift, n0, info);
    return a;
  }
};

// y: a CUDA float/double/half/bfloat16 (N, C, H, W) tensor, NCHW-contiguous (preferred
// when both hold) or channels_last-contiguous. Errors name `op` and `name`.
ActivationInfo check_activation(const char* op, const char* name, const at::Tensor& y);

// `t` (grad_out, residual) must match y: same sizes, dtype, device and layout.
void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& y,
                const ActivationInfo& info);

// A coefficient: contiguous, on y's device, in y's accumulation dtype, of `shape`.
void check_coef(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& y);
void check_coef(const char* op, const char* name, const std::optional<at::Tensor>& t, at::IntArrayRef shape,
                const at::Tensor& y);

// `what` given iff `other` given (e.g. res_scale and res_shift).
void check_together(const char* op, const char* what, const std::optional<at::Tensor>& a, const char* other,
                    const std::optional<at::Tensor>& b);
// `what` needs `needed` (e.g. res_center needs residual).
void check_requires(const char* op, const char* what, bool given, const char* needed, bool needed_given);

// The arguments of the pre-activation z = y*scale + shift + R common to the three
// scale_shift_act primitives: scale, shift (N, C); residual like y; res_scale, res_shift
// (C,), together, and only with residual.
void check_pre_activation(const char* op, const at::Tensor& y, const ActivationInfo& info, const at::Tensor& scale,
                          const at::Tensor& shift, const std::optional<at::Tensor>& residual,
                          const std::optional<at::Tensor>& res_scale, const std::optional<at::Tensor>& res_shift);


// Accumulation dtype of y's dtype.
at::ScalarType acc_scalar_type(const at::Tensor& y);

// Multiprocessor count of the current device.
int sm_count();

// Data pointer of an optional tensor, or nullptr.
template <typename T>
T* opt_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}
template <typename T>
const T* opt_cptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<T>() : nullptr;
}

template <typename scalar_t>
ScaleShiftArgs<scalar_t> scale_shift_args(const at::Tensor& y, const at::Tensor& scale, const at::Tensor& shift,
                                          const std::optional<at::Tensor>& residual,
                                          const std::optional<at::Tensor>& res_scale,
                                          const std::optional<at::Tensor>& res_shift, bool relu) {
  using acc_t = acc_type<scalar_t>;
  ResMode mode = ResMode::kNone;
  if (residual.has_value()) mode = res_scale.has_value() ? ResMode::kAffine : ResMode::kPlain;
  return {y.const_data_ptr<scalar_t>(), opt_cptr<scalar_t>(residual), scale.const_data_ptr<acc_t>(),
          shift.const_data_ptr<acc_t>(), opt_cptr<acc_t>(res_scale), opt_cptr<acc_t>(res_shift), mode, relu};
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The largest power of two <= 16 dividing every non-null pointer's address (16 when none).
template <typename... Ptrs>
int pointer_alignment(const Ptrs*... ptrs) {
  uintptr_t bits = 16;
  ((bits |= ptrs == nullptr ? 0 : reinterpret_cast<uintptr_t>(ptrs)), ...);
  return static_cast<int>(bits & (~bits + 1));  // lowest set bit
}

template <typename... Ptrs>
bool all_aligned16(const Ptrs*... ptrs) {
  return ((ptrs == nullptr || aligned16(ptrs)) && ...);
}

// Runs f(IntC<V>{}) with V = vec_width<scalar_t>() when `vec`, else V = 1.
template <typename scalar_t, class F>
void with_vec(bool vec, F&& f) {
  if (vec) {
    f(IntC<vec_width<scalar_t>()>{});
  } else {
    f(IntC<1>{});
  }
}

// Runs f(IntC<V>{}) for a reduction's load width V (ReducePlan::V): the 16-byte width, its
// half (8-byte loads), or 1.
template <typename scalar_t, class F>
void with_width(int V, F&& f) {
  constexpr int kVec = vec_width<scalar_t>();
  if (V == kVec) {
    f(IntC<kVec>{});
  } else if constexpr (kVec / 2 > 1) {
    if (V == kVec / 2) {
      f(IntC<kVec / 2>{});
    } else {
      f(IntC<1>{});
    }
  } else {
    f(IntC<1>{});
  }
}

// Calls f(n0, count) for consecutive runs of whole samples holding at most
// kMaxChunkElements elements each (one run for every ResNet shape).
// (launch_plan.h's for_each_chunk_of, with the error for a sample past the limit.)
template <class F>
void for_each_chunk(const ActivationInfo& info, F&& f) {
  TORCH_CHECK(chunk_samples(info) > 0, "resnet_fast: one sample of ", info.C * info.HW,
              " elements (C*H*W) exceeds the CUDA kernels' limit of ", kMaxChunkElements);
  for_each_chunk_of(info, kMaxChunkElements, f);
}

}  // namespace cuda
}  // namespace resnet_fast
