// Per-(n, c) reductions over H*W, shared by bn_stats and scale_shift_act_backward_reduce.
//
// Stage 1 (this file) splits every (n, c) plane into S segments of L hw positions and
// writes one partial per (n, s, c) to a workspace laid out (N, S, C); stage 2 (a
// finalize kernel of each primitive) merges the S partials of each (n, c) in order, then
// the N per-sample results of each channel in a fixed tree. No atomics: results are
// bitwise reproducible run to run.
//
// NCHW: a plane is HW contiguous elements. A unit (n, c, s) is one segment; a group of G
//   lanes (G a power of two <= 32, several units per warp when planes are short) reads it
//   with V-wide loads, lane-strided so the group's accesses are contiguous, then merges
//   its lanes with xor shuffles in a fixed butterfly.
// NHWC: a sample is HW rows of C contiguous channels. A block is (TX channel vectors) x
//   (TY = 256/TX rows); thread (tx, ty) owns channels [cv*V, cv*V + V) and walks the rows
//   ty, ty + TY, ... of its segment, so a warp reads whole rows (or 512 contiguous bytes of
//   a long row). The TY threads of a channel vector merge through shared memory in a
//   fixed tree. Grid: (N*S segments, channel tiles).
//
// An Op supplies the per-element work (see bn_stats.cu, scale_shift_act_backward_reduce.cu):
//   kVec (V), kUnroll / kRowUnroll (U: packs / rows loaded before they are used), PlaneState,
//   RowState, plane_context(n, c, nc, first), row_context(n, c0, nc0, first, row_stride, rows)
//   (first: the chunk offset of the segment's first element / first row's channel vector;
//   row_stride = C; rows: the segment's rows),
//   accumulate_plane, accumulate_rows, combine, shfl_xor, store_plane(st, ctx, p, count),
//   store_rows(st, ctx, p, count) (count: the segment's values per channel).
#pragma once

#include "common.cuh"

namespace resnet_fast {
namespace cuda {

// ReducePlan, plan_reduce, ReduceGrid and the per-thread offsets: launch_plan.h.

// align: pointer_alignment() of the activations; coef_align: of the coefficients the NHWC
// kernel loads V at a time (16 when there are none).
template <class Op>
ReducePlan plan_reduce_for(const ActivationInfo& info, int align, int coef_align, int sms) {
  const ReducePlan p = plan_reduce(info, vec_width<typename Op::scalar_type>(), Op::kUnroll, Op::kRowUnroll, align,
                                   coef_align, sms);
  TORCH_CHECK(info.layout == Layout::NCHW || p.ctiles <= 65535, "resnet_fast: ", info.C,
              " channels exceed the CUDA reduction kernels' limit");
  return p;
}

// Merges the states of the threads sharing tx, in fixed pairs (ty, ty + stride); the
// result is in the threads with ty == 0. TY is a power of two; every thread calls it.
template <class State, class Combine>
__device__ __forceinline__ State tree_reduce_y(State st, State* smem, int tx, int ty, int TX, int TY, Combine combine) {
  smem[ty * TX + tx] = st;
  for (int stride = TY >> 1; stride > 0; stride >>= 1) {
    __syncthreads();
    if (ty < stride) {
      combine(st, smem[(ty + stride) * TX + tx]);
      smem[ty * TX + tx] = st;
    }
  }
  return st;
}

// Merges the states of groups of P consecutive rows ty (P a power of two), in fixed pairs
// (p, p + stride) of lanes p = ty % P; the result is in the rows with p == 0. Every thread
// calls it; it ends with a barrier, so smem may be reused at once.
template <class State, class Combine>
__device__ __forceinline__ State tree_reduce_groups(State st, State* smem, int tx, int ty, int TX, int P,
                                                    Combine combine) {
  smem[ty * TX + tx] = st;
  for (int stride = P >> 1; stride > 0; stride >>= 1) {
    __syncthreads();
    if ((ty & (P - 1)) < stride) {
      combine(st, smem[(ty + stride) * TX + tx]);
      smem[ty * TX + tx] = st;
    }
  }
  __syncthreads();
  return st;
}

template <class Op>
__global__ void __launch_bounds__(kThreads) _nchw_reduce_kernel(const Op op, const ReduceGrid g) {
  constexpr int V = Op::kVec;
  constexpr int U = Op::kUnroll;
  const NchwUnit u = nchw_unit(g, blockIdx.x, threadIdx.x);
  typename Op::PlaneState st{};
  typename Op::PlaneContext ctx{};
  if (u.active) {
    ctx = op.plane_context(u.n, u.c, u.nc, nchw_first(g, u));
    nchw_batches<V, U>(g, u, [&](const uint32_t (&off)[U], int k) { op.accumulate_plane(st, ctx, off, k); });
  }
  for (int offset = g.G >> 1; offset > 0; offset >>= 1) Op::combine(st, Op::shfl_xor(st, offset));
  if (u.active && u.lane == 0) {
    op.store_plane(st, ctx, nchw_partial(g, u), static_cast<int>(segment_count(g.HW, g.L, u.s)));
  }
}

template <class Op>
__global__ void __launch_bounds__(kThreads, 2) _nhwc_reduce_kernel(const Op op, const ReduceGrid g) {
  constexpr int V = Op::kVec;
  constexpr int U = Op::kRowUnroll;
  const NhwcThread t = nhwc_thread(g, blockIdx.x, blockIdx.y, threadIdx.x);
  __shared__ typename Op::RowState smem[kThreads];
  typename Op::RowState st{};
  typename Op::RowContext ctx{};
  if (t.active) {
    ctx = op.row_context(t.n, t.cv * V, t.n * g.C + t.cv * V, nhwc_first<V>(g, t), static_cast<uint32_t>(g.C),
                         static_cast<int>(segment_count(g.HW, g.L, t.s)));
    nhwc_batches<V, U>(g, t, [&](const uint32_t (&off)[U], int k) { op.accumulate_rows(st, ctx, off, k); });
  }
  st = tree_reduce_y(st, smem, t.tx, t.ty, t.TX, t.TY,
                     [](typename Op::RowState& a, const typename Op::RowState& b) { Op::combine(a, b); });
  if (t.active && t.ty == 0) {
    op.store_rows(st, ctx, nhwc_partial(g, t, V), static_cast<int>(segment_count(g.HW, g.L, t.s)));
  }
}

// Stage 1 over one chunk of n_chunk samples (the Op's pointers already offset to it).
// kNchw / kNhwc: which layouts' kernels this Op is instantiated for (an Op used for one
// layout only saves the other's compile time); the plan's layout must be one of them.
template <class Op, bool kNchw = true, bool kNhwc = true>
void launch_reduce(const Op& op, const ReducePlan& plan, const ActivationInfo& info, int64_t n_chunk,
                   cudaStream_t stream) {
  const ReduceLaunch l = reduce_launch(plan, info, n_chunk);
  if (plan.layout == Layout::NCHW) {
    TORCH_INTERNAL_ASSERT(kNchw, "resnet_fast: no NCHW reduction kernel for this Op");
    if constexpr (kNchw) _nchw_reduce_kernel<Op><<<static_cast<unsigned>(l.blocks_x), kThreads, 0, stream>>>(op, l.g);
  } else {
    TORCH_INTERNAL_ASSERT(kNhwc, "resnet_fast: no NHWC reduction kernel for this Op");
    const dim3 grid(static_cast<unsigned>(l.blocks_x), static_cast<unsigned>(l.blocks_y));
    if constexpr (kNhwc) _nhwc_reduce_kernel<Op><<<grid, kThreads, 0, stream>>>(op, l.g);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Stage-2 (finalize) thread layout: 32 channels x 32 rows per block; how the rows share the
// (n, s) partials: launch_plan.h, "stage 2".
constexpr int kFinalizeTX = 32;
constexpr int kFinalizeTY = kFinalizeRows;
constexpr int kFinalizeThreads = kFinalizeTX * kFinalizeTY;

inline unsigned finalize_blocks(int64_t C) { return static_cast<unsigned>(ceil_div(C, kFinalizeTX)); }

}  // namespace cuda
}  // namespace resnet_fast
