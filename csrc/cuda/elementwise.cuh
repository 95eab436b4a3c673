// Flat, vectorized elementwise driver shared by scale_shift_act and
// scale_shift_act_backward_apply, and the coefficient lookups of both layouts.
//
// A grid-stride loop over vectors of V elements (16 bytes when V == vec_width), the tail
// (numel % V < V elements) done by the first threads with V = 1. A thread takes Op::kUnroll
// vectors at a time and issues all their activation loads (Op::load) before it computes and
// stores any (Op::finish): kUnroll loads per tensor in flight per thread, which the compiler
// would not arrange itself (an output may alias an input as far as it knows). For each
// vector it computes a Pos: where its per-(n, c) and per-channel coefficients are.
//   NCHW (V > 1 needs HW >= V): the vector lies in plane nc0 except its elements
//     j >= split, which lie in plane nc0 + 1 (HW % V != 0 only: 7x7, 14x14); the
//     coefficients are two scalar loads per array, selected per element.
//   NHWC (V > 1 needs C % V == 0): the vector holds channels c0 .. c0+V-1 of one sample,
//     so its coefficients are V consecutive values: 16-byte loads (L1-resident: a
//     sample's coefficients are reused over all its H*W positions).
#pragma once

#include "common.cuh"

namespace resnet_fast {
namespace cuda {

// What the elementwise kernels need to locate an element (one chunk of samples).
struct FlatGeom {
  uint32_t numel;
  uint32_t C, HW;
  at::cuda::detail::IntDivider<uint32_t> div_c, div_hw;
};

// Pos and position<V, L>(i0, C, HW, div_c, div_hw): launch_plan.h.
template <int V, Layout L>
__device__ __forceinline__ Pos position(uint32_t i0, const FlatGeom& g) {
  return position<V, L>(i0, g.C, g.HW, g.div_c, g.div_hw);
}

// Per-(n, c) coefficients of the vector's V elements.
template <int V, Layout L, typename acc_t>
__device__ __forceinline__ void gather_nc(const acc_t* __restrict__ p, const Pos& pos, acc_t (&out)[V]) {
  if constexpr (L == Layout::NHWC) {
    load_coef<V>(p + pos.nc0, out);
  } else {
    const acc_t a = p[pos.nc0];
    const acc_t b = pos.split < V ? p[pos.nc0 + 1] : a;
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = j < static_cast<int>(pos.split) ? a : b;
  }
}

// Per-channel coefficients of the vector's V elements.
template <int V, Layout L, typename acc_t>
__device__ __forceinline__ void gather_c(const acc_t* __restrict__ p, const Pos& pos, acc_t (&out)[V]) {
  if constexpr (L == Layout::NHWC) {
    load_coef<V>(p + pos.c0, out);
  } else {
    const acc_t a = p[pos.c0];
    const acc_t b = pos.split < V ? p[pos.c1] : a;
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = j < static_cast<int>(pos.split) ? a : b;
  }
}

// The pre-activation z = y*scale[n,c] + shift[n,c] + R of V elements whose y and residual
// values are y, r (r unused with mode kNone); shared by the forward and the backward mask
// so both round identically.
template <int V, Layout L, typename scalar_t, typename acc_t>
__device__ __forceinline__ void pre_activation_vec(const ScaleShiftArgs<scalar_t>& a, const Pos& pos,
                                                   const acc_t (&y)[V], const acc_t (&r)[V], acc_t (&z)[V]) {
  acc_t sc[V], sh[V], rs[V] = {}, rb[V] = {};
  gather_nc<V, L>(a.scale, pos, sc);
  gather_nc<V, L>(a.shift, pos, sh);
  if (a.mode == ResMode::kAffine) {
    gather_c<V, L>(a.res_scale, pos, rs);
    gather_c<V, L>(a.res_shift, pos, rb);
  }
#pragma unroll
  for (int j = 0; j < V; ++j) z[j] = pre_activation(y[j], sc[j], sh[j], r[j], rs[j], rb[j], a.mode);
}

// An elementwise op (its operands, kUnroll, In<W> (a vector's loaded activations),
// load<W>(i0) and finish<W, L>(i0, pos, in), which process elements [i0, i0 + W)) run with
// vectors of V elements.
template <class Op, int V>
struct Vectorized : Op {
  static constexpr int kVec = V;
};

// One batch of K vectors of W elements: all loads, then positions, arithmetic and stores.
// (A functor, not a generic lambda in the kernel: CUDA 13.0's cicc crashed on the lambda.)
template <class Op, Layout L>
struct ElementwiseBatch {
  const Op& op;
  const FlatGeom& g;
  template <int K, int W>
  __device__ __forceinline__ void operator()(const uint32_t (&i0)[Op::kUnroll], std::integral_constant<int, K>,
                                             std::integral_constant<int, W>) const {
    typename Op::template In<W> in[K];
#pragma unroll
    for (int j = 0; j < K; ++j) in[j] = op.template load<W>(i0[j]);
#pragma unroll
    for (int j = 0; j < K; ++j) op.template finish<W, L>(i0[j], position<W, L>(i0[j], g), in[j]);
  }
};

template <class Op, Layout L>
__global__ void __launch_bounds__(kThreads) _elementwise_kernel(const Op op, const FlatGeom g) {
  elementwise_thread<Op::kVec, Op::kUnroll>(g.numel, blockIdx.x * kThreads + threadIdx.x, gridDim.x * kThreads,
                                            ElementwiseBatch<Op, L>{op, g});
}

FlatGeom flat_geom(const ActivationInfo& info, int64_t n_chunk);

// Runs `op` over one chunk of n_chunk samples (its pointers already offset to it), with
// 16-byte vectors when `vec`.
template <typename scalar_t, class Op>
void launch_elementwise(const Op& op, bool vec, const ActivationInfo& info, int64_t n_chunk, int sms,
                        cudaStream_t stream) {
  const FlatGeom g = flat_geom(info, n_chunk);
  with_vec<scalar_t>(vec, [&](auto v) {
    using VOp = Vectorized<Op, decltype(v)::value>;
    const unsigned blocks = elementwise_blocks(g.numel, VOp::kVec, sms);
    if (info.layout == Layout::NCHW) {
      _elementwise_kernel<VOp, Layout::NCHW><<<blocks, kThreads, 0, stream>>>(VOp{op}, g);
    } else {
      _elementwise_kernel<VOp, Layout::NHWC><<<blocks, kThreads, 0, stream>>>(VOp{op}, g);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Whether the vectorized path applies to a chunk: launch_plan.h's elementwise_vec with the
// alignment of the activation pointers (align) and of the coefficient pointers (coef_align),
// both from pointer_alignment().
template <typename scalar_t>
bool elementwise_vec_ok(const ActivationInfo& info, int align, int coef_align) {
  return elementwise_vec(info, vec_width<scalar_t>(), align, coef_align);
}

}  // namespace cuda
}  // namespace resnet_fast
