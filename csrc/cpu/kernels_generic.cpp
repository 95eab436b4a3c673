// The kernel headers compiled for the build's baseline instruction set: ATen's DEFAULT
// Vectorized (on x86-64 SSE2 code from its generic loops, on aarch64 NEON). Used where torch
// itself runs its DEFAULT kernels, or where kernels_avx2.cpp is not built.
#define RESNET_FAST_ISA generic
#include "bn_stats_kernel.h"
#include "scale_shift_act_kernel.h"

namespace resnet_fast::cpu {

const Kernels kGenericKernels = {&generic::bn_stats_kernel, &generic::scale_shift_act_kernel,
                                 &generic::backward_reduce_kernel, &generic::backward_apply_kernel};

}  // namespace resnet_fast::cpu
