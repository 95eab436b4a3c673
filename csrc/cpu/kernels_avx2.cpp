// The kernel headers compiled for x86-64 AVX2 (+F16C), picked at run time by kernels() where
// torch's own CPU capability is AVX2 or AVX512.
//
// Why a pragma and not a compiler flag: setuptools compiles every source with the same flags,
// and the extension must still load and run on CPUs without AVX2. So, as ATen does for its own
// kernels, this file compiles ATen's AVX2 Vectorized (namespace at::vec::AVX2) next to the
// generic build (kernels_generic.cpp), in its own namespace resnet_fast::cpu::avx2:
//   1. every non-vector header is included first (isa_baseline_headers.h), under the baseline
//      ISA, so inline functions that other files share (c10, std) are compiled for any x86-64;
//   2. `#pragma GCC target("avx2,f16c")` then applies to the vector headers and our kernels;
//      GCC does not define __AVX2__ for the pragma in C++, so it is defined here for sleef.h's
//      declarations;
//   3. FMA stays off on purpose: GCC would contract a * b + c and round differently from the
//      torch reference;
//   4. nothing in this file runs at load time (the table below is constant-initialized), so
//      loading the library never executes AVX2 code.
#include "common.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)

#include "isa_baseline_headers.h"

#pragma GCC push_options
#pragma GCC target("avx2,f16c")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // AVX vector arguments of lambdas in ATen's headers
#ifndef __AVX2__
#define __AVX__ 1
#define __AVX2__ 1
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define RESNET_FAST_ISA avx2
#include "bn_stats_kernel.h"
#include "scale_shift_act_kernel.h"
#pragma GCC diagnostic pop
#pragma GCC pop_options

namespace resnet_fast::cpu {
namespace {
const Kernels kAvx2Table = {&avx2::bn_stats_kernel, &avx2::scale_shift_act_kernel, &avx2::backward_reduce_kernel,
                            &avx2::backward_apply_kernel};
}  // namespace
const Kernels* const kAvx2Kernels = &kAvx2Table;
}  // namespace resnet_fast::cpu

#else  // not x86-64 GCC: the generic build only

namespace resnet_fast::cpu {
const Kernels* const kAvx2Kernels = nullptr;
}  // namespace resnet_fast::cpu

#endif
