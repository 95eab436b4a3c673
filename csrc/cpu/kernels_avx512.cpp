// The kernel headers compiled for x86-64 AVX-512 (F, BW, VL, DQ), picked at run time by
// kernels() where torch's own CPU capability is AVX512. Built like kernels_avx2.cpp (read its
// comment first): non-vector headers under the baseline ISA, then a target pragma for ATen's
// AVX512 Vectorized and our kernels, in the namespace resnet_fast::cpu::avx512.
//
// Why a third build: with their data in L2/L3 the passes are not purely bandwidth-bound, and
// 16 float lanes halve the instructions per byte. On the 2-core AMD EPYC (AVX-512) this was
// measured on, bn_relu / bn_add_relu forward+backward took 2-15 % less time than with the
// AVX2 build at the 28x28, 14x14 and 7x7 stages, and the same at 56x56 (memory-bound):
// benchmarks/results/cpu-2026-12-02-avx512/.
//
// Same results bit for bit as the AVX2 and generic builds:
//   - NHWC: lanes are channels, so a lane's sum over rows keeps its order whatever the width;
//     the elementwise arithmetic is per lane, in the same order, without FMA
//     (-ffp-contract=off in _build_config.py: AVX-512F brings fused multiply-adds of its own);
//   - NCHW: lanes run along a plane, where 16 lanes would regroup the partial sums, so the
//     NCHW calls go to the AVX2 kernels (the AVX512 capability implies AVX2).
#include "common.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)

#include "isa_baseline_headers.h"

#pragma GCC push_options
#pragma GCC target("avx2,f16c,fma,avx512f,avx512bw,avx512vl,avx512dq")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#ifndef __AVX512F__
#define __AVX__ 1
#define __AVX2__ 1
#define __F16C__ 1
#define __FMA__ 1
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define RESNET_FAST_ISA avx512
#include "bn_stats_kernel.h"
#include "scale_shift_act_kernel.h"
#pragma GCC diagnostic pop
#pragma GCC pop_options

namespace resnet_fast::cpu {
namespace {

// NHWC here, NCHW in the AVX2 build (see the top of this file).
void bn_stats(const Geometry& g, const Tensor& y, double* mean_nc, double* m2_nc) {
  if (!g.channels_last) return kAvx2Kernels->bn_stats(g, y, mean_nc, m2_nc);
  avx512::bn_stats_kernel(g, y, mean_nc, m2_nc);
}

void scale_shift_act(const Geometry& g, const PreActArgs& args, const Tensor& out) {
  if (!g.channels_last) return kAvx2Kernels->scale_shift_act(g, args, out);
  avx512::scale_shift_act_kernel(g, args, out);
}

void backward_reduce(const Geometry& g, const PreActArgs& args, const Tensor& grad_out, const Tensor& center,
                     const OptTensor& res_center, double* sums, const Tensor* masked_grad) {
  if (!g.channels_last) return kAvx2Kernels->backward_reduce(g, args, grad_out, center, res_center, sums, masked_grad);
  avx512::backward_reduce_kernel(g, args, grad_out, center, res_center, sums, masked_grad);
}

void backward_apply(const Geometry& g, const PreActArgs& args, const Tensor& grad_out, const ApplyArgs& coefs,
                    const Tensor& grad_y, const Tensor* grad_residual) {
  if (!g.channels_last) return kAvx2Kernels->backward_apply(g, args, grad_out, coefs, grad_y, grad_residual);
  avx512::backward_apply_kernel(g, args, grad_out, coefs, grad_y, grad_residual);
}

const Kernels kAvx512Table = {&bn_stats, &scale_shift_act, &backward_reduce, &backward_apply, "avx512"};
}  // namespace
const Kernels* const kAvx512Kernels = &kAvx512Table;
}  // namespace resnet_fast::cpu

#else  // not x86-64 GCC: no AVX-512 build

namespace resnet_fast::cpu {
const Kernels* const kAvx512Kernels = nullptr;
}  // namespace resnet_fast::cpu

#endif
