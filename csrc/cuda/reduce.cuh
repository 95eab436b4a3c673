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
//   RowState, plane_context(n, c, nc), row_context(n, c0, nc0), accumulate_plane,
//   accumulate_rows, combine, shfl_xor, store_plane, store_rows.
#pragma once

#include "common.cuh"

namespace resnet_fast {
namespace cuda {

// How one reduction is split into work (host side; the same for every chunk).
struct ReducePlan {
  Layout layout;
  bool vec;    // V = vec_width when true, 1 otherwise
  int S;       // segments per plane (NCHW) or per sample's rows (NHWC)
  int L;       // segment length in hw positions (NCHW: a multiple of V)
  int G;       // NCHW: lanes per unit; NHWC: TX, channel vectors per block (power of two <= 32)
  int cvecs;   // NHWC: channel vectors per row, C / V
  int ctiles;  // NHWC: blocks across the channels, ceil(cvecs / TX)
};

// What the stage-1 kernels read (a chunk of samples).
struct ReduceGrid {
  int C, HW;
  int S, L, G;
  int cvecs;  // NHWC
  int units;  // NCHW: planes * S in this chunk
};

// `vec`: the 16-byte width of the dtype; `unroll`, `row_unroll`: the Op's kUnroll and
// kRowUnroll; `aligned`: every pointer the Op dereferences is 16-byte aligned.
ReducePlan plan_reduce(const ActivationInfo& info, int vec, int unroll, int row_unroll, bool aligned, int sms);

template <class Op>
ReducePlan plan_reduce_for(const ActivationInfo& info, bool aligned, int sms) {
  return plan_reduce(info, vec_width<typename Op::scalar_type>(), Op::kUnroll, Op::kRowUnroll, aligned, sms);
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

template <class Op>
__global__ void __launch_bounds__(kThreads) _nchw_reduce_kernel(const Op op, const ReduceGrid g) {
  constexpr int V = Op::kVec;
  constexpr int U = Op::kUnroll;
  const int gl = threadIdx.x & (g.G - 1);                              // lane in the group
  const int unit = blockIdx.x * (kThreads / g.G) + threadIdx.x / g.G;  // (nc, s), s fastest
  const bool active = unit < g.units;
  typename Op::PlaneState st{};
  int nc = 0, s = 0;
  if (active) {
    nc = unit / g.S;
    s = unit - nc * g.S;
    const int n = nc / g.C;
    const auto ctx = op.plane_context(n, nc - n * g.C, nc);
    const uint32_t base = static_cast<uint32_t>(nc) * g.HW;  // plane start; < chunk numel
    const uint32_t a = static_cast<uint32_t>(s) * g.L;
    const uint32_t b = min(a + g.L, static_cast<uint32_t>(g.HW));
    const uint32_t step = static_cast<uint32_t>(g.G) * V;
    for (uint32_t e = a + gl * V; e < b; e += step * U) {
      uint32_t off[U];
      int k = 0;  // packs of this batch inside the segment (a prefix)
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const uint32_t eu = e + u * step;
        off[u] = base + eu;
        k += eu < b;
      }
      op.accumulate_plane(st, ctx, off, k);
    }
  }
  for (int offset = g.G >> 1; offset > 0; offset >>= 1) Op::combine(st, Op::shfl_xor(st, offset));
  if (active && gl == 0) {
    const int n = nc / g.C;
    op.store_plane(st, (n * g.S + s) * g.C + (nc - n * g.C));
  }
}

template <class Op>
__global__ void __launch_bounds__(kThreads, 2) _nhwc_reduce_kernel(const Op op, const ReduceGrid g) {
  constexpr int V = Op::kVec;
  constexpr int U = Op::kRowUnroll;
  const int TX = g.G;
  const int TY = kThreads / TX;
  const int tx = threadIdx.x & (TX - 1);
  const int ty = threadIdx.x / TX;
  const int cv = blockIdx.y * TX + tx;  // channel vector: channels [cv*V, cv*V + V)
  const bool active = cv < g.cvecs;
  const int n = blockIdx.x / g.S;
  const int s = blockIdx.x - n * g.S;
  __shared__ typename Op::RowState smem[kThreads];
  typename Op::RowState st{};
  if (active) {
    const auto ctx = op.row_context(n, cv * V, n * g.C + cv * V);
    const uint32_t r0 = static_cast<uint32_t>(s) * g.L;
    const uint32_t r1 = min(r0 + g.L, static_cast<uint32_t>(g.HW));
    const uint32_t row_base = static_cast<uint32_t>(n) * g.HW;  // sample's first row
    for (uint32_t r = r0 + ty; r < r1; r += static_cast<uint32_t>(TY) * U) {
      uint32_t off[U];
      int k = 0;  // rows of this batch inside the segment (a prefix)
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const uint32_t ru = r + u * TY;
        off[u] = (row_base + ru) * g.C + cv * V;  // wraps harmlessly past the end: not loaded
        k += ru < r1;
      }
      op.accumulate_rows(st, ctx, off, k);
    }
  }
  st = tree_reduce_y(st, smem, tx, ty, TX, TY,
                     [](typename Op::RowState& a, const typename Op::RowState& b) { Op::combine(a, b); });
  if (active && ty == 0) op.store_rows(st, (n * g.S + s) * g.C + cv * V);
}

// Stage 1 over one chunk of n_chunk samples (the Op's pointers already offset to it).
template <class Op>
void launch_reduce(const Op& op, const ReducePlan& plan, const ActivationInfo& info, int64_t n_chunk,
                   cudaStream_t stream) {
  ReduceGrid g{static_cast<int>(info.C), static_cast<int>(info.HW), plan.S, plan.L, plan.G, plan.cvecs, 0};
  if (plan.layout == Layout::NCHW) {
    const int64_t units = n_chunk * info.C * plan.S;  // <= chunk numel: fits int
    g.units = static_cast<int>(units);
    const int64_t blocks = ceil_div(units, kThreads / plan.G);
    _nchw_reduce_kernel<Op><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(op, g);
  } else {
    const dim3 grid(static_cast<unsigned>(n_chunk * plan.S), static_cast<unsigned>(plan.ctiles));
    _nhwc_reduce_kernel<Op><<<grid, kThreads, 0, stream>>>(op, g);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Stage-2 (finalize) thread layout: 32 channels x 32 samples per block.
constexpr int kFinalizeThreads = 1024;
constexpr int kFinalizeTX = 32;
constexpr int kFinalizeTY = kFinalizeThreads / kFinalizeTX;

inline unsigned finalize_blocks(int64_t C) { return static_cast<unsigned>(ceil_div(C, kFinalizeTX)); }

}  // namespace cuda
}  // namespace resnet_fast
