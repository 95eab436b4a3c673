// Allocation of the CPU kernels' large outputs from a cache of freed blocks (output_cache.cpp).
//
// Why. glibc's malloc serves requests above its mmap threshold (at most 32 MiB) with fresh
// mmap()s and trims freed heap tops back to the kernel, so a freshly allocated activation is
// often first touched page by page: one page fault per 4 KiB, in which the kernel zero-fills
// the page. For a ResNet activation that is one extra write of the whole tensor, as costly as
// a kernel pass (a training step of resnet50 at batch 16 takes ~400k faults in eager).
// Training allocates the same sizes every step, so keeping the blocks our outputs free and
// handing them back for the next output of the same size removes those faults, as CUDA's
// caching allocator does on the GPU. Only our own outputs go through it: torch's allocator,
// and so eager PyTorch in the same process, is left as it is.
//
// Blocks of at least 1 MiB are cached, keyed by size (rounded up to 64 KiB), up to a limit
// of cached (free) bytes: RESNET_FAST_CPU_CACHE_BYTES at first use (a value that is not a
// byte count warns), else 1/8 of physical memory or of the container's (cgroup) limit, the
// lower; 0 turns the cache off. resnet_fast.cpu_cache (Python) reads and changes it.
#pragma once

#include <ATen/ATen.h>

namespace resnet_fast::cpu {

// An uninitialized tensor with y's sizes, strides and dtype on the CPU; from the cache when
// it is large enough to be worth it.
at::Tensor empty_activation_like(const at::Tensor& y);

}  // namespace resnet_fast::cpu
