// The non-vector headers the kernel headers reach, included by kernels_avx2.cpp before its
// `#pragma GCC target`: compiled under the baseline ISA, the inline functions these define
// and other files share (c10, ATen, std) stay runnable on any x86-64 (step 1 of the comment at the top of kernels_avx2.cpp).
#pragma once

#include <ATen/AccumulateType.h>
#include <ATen/NumericUtils.h>
#include <ATen/native/Math.h>
#include <ATen/native/cpu/zmath.h>
#include <ATen/native/quantized/AffineQuantizerBase.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/MathConstants.h>
#include <c10/util/complex.h>
#include <c10/util/copysign.h>
#include <x86intrin.h>
