// Argument checks of bn_finalize and bn_backward_finalize, shared by their CPU kernels
// (csrc/cpu/bn_finalize.cpp, bn_backward_finalize.cpp) and CUDA kernels (csrc/cuda/
// bn_finalize.cu): host code only. Every message names the op and the argument.
//
// Contract (resnet_fast/ops/primitives.py): statistics, gradient sums and their outputs in one
// accumulation dtype (float32, or float64), all on one device; the per-channel ones (C,), the
// per-sample sums (N, C) or already summed (C,); weight and bias (C,) of any floating dtype.
// Any strides are accepted: the kernels index with them.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

#include "bn_algebra.h"

namespace resnet_fast {
namespace finalize {

// A table of per-sample sums as the kernels read it: (rows, C) with strides; a (C,) total is
// one row.
struct SumTable {
  const void* data;
  int64_t rows;
  int64_t row_stride;
  int64_t col_stride;
};

class Checker {
 public:
  // `first` (named `first_name`) fixes the channel count C (its length), the accumulation
  // dtype and the device of every other argument; `kernel` is the kernel's device type.
  Checker(const char* op, const char* first_name, const at::Tensor& first, c10::DeviceType kernel)
      : op_(op), first_name_(first_name), first_(first) {
    TORCH_CHECK(first.defined(), op, ": ", first_name, " must be a defined tensor");
    TORCH_CHECK(first.device().type() == kernel, op, ": the ", c10::DeviceTypeName(kernel), " kernel got ",
                first_name, " on ", first.device(), " (every tensor argument must be on one device)");
    TORCH_CHECK(first.dim() == 1, op, ": expected ", first_name, " to have shape (C,), got ", first.sizes());
    const auto dtype = first.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op, ": expected ", first_name,
                " to be float32 or float64 (the accumulation dtype), got ", dtype);
  }

  int64_t channels() const { return first_.size(0); }
  at::ScalarType acc_dtype() const { return first_.scalar_type(); }

  // (C,) in the accumulation dtype, on the device of `first`.
  void per_channel(const char* name, const at::Tensor& t) const {
    same_device(name, t);
    TORCH_CHECK(t.dim() == 1 && t.size(0) == channels(), op_, ": expected ", name, " to have shape (",
                channels(), ",) like ", first_name_, ", got ", t.sizes());
    same_dtype(name, t);
  }

  // (N, C) per-sample sums or a (C,) total, in the accumulation dtype.
  SumTable sums(const char* name, const at::Tensor& t) const {
    same_device(name, t);
    TORCH_CHECK((t.dim() == 1 || t.dim() == 2) && t.size(-1) == channels(), op_, ": expected ", name,
                " to have shape (N, ", channels(), ") or (", channels(), ",), got ", t.sizes());
    same_dtype(name, t);
    if (t.dim() == 1) return {t.const_data_ptr(), 1, 0, t.stride(0)};
    return {t.const_data_ptr(), t.size(0), t.stride(0), t.stride(1)};
  }

  // A weight or bias: absent, or (C,) of any floating dtype (read in the accumulation dtype).
  bn::Param param(const char* name, const std::optional<at::Tensor>& t) const {
    if (!t.has_value() || !t->defined()) return {nullptr, 0, bn::ParamType::kAbsent};
    same_device(name, *t);
    TORCH_CHECK(t->dim() == 1 && t->size(0) == channels(), op_, ": expected ", name, " to have shape (",
                channels(), ",) like ", first_name_, ", got ", t->sizes());
    bn::ParamType type = bn::ParamType::kAbsent;
    switch (t->scalar_type()) {
      case at::kHalf: type = bn::ParamType::kHalf; break;
      case at::kBFloat16: type = bn::ParamType::kBFloat16; break;
      case at::kFloat: type = bn::ParamType::kFloat; break;
      case at::kDouble: type = bn::ParamType::kDouble; break;
      default:
        TORCH_CHECK(false, op_, ": expected ", name, " to be float16, bfloat16, float32 or float64, got ",
                    t->scalar_type());
    }
    return {t->const_data_ptr(), t->stride(0), type};
  }

  void non_negative(const char* name, int64_t value) const {
    TORCH_CHECK(value >= 0, op_, ": expected ", name, " >= 0, got ", value);
  }

 private:
  void same_device(const char* name, const at::Tensor& t) const {
    TORCH_CHECK(t.defined(), op_, ": ", name, " must be a defined tensor");
    TORCH_CHECK(t.device() == first_.device(), op_, ": expected ", name, " on ", first_.device(), " like ",
                first_name_, ", got ", t.device());
  }

  void same_dtype(const char* name, const at::Tensor& t) const {
    TORCH_CHECK(t.scalar_type() == first_.scalar_type(), op_, ": expected ", name, " to be ",
                first_.scalar_type(), " like ", first_name_, " (the accumulation dtype), got ", t.scalar_type());
  }

  const char* op_;
  const char* first_name_;
  const at::Tensor& first_;
};

// The output shape of a per-channel coefficient that the elementwise kernels read per
// (n, c): an (n, C) table when n > 0, else (C,).
inline std::vector<int64_t> table_shape(int64_t n, int64_t C) {
  return n > 0 ? std::vector<int64_t>{n, C} : std::vector<int64_t>{C};
}

}  // namespace finalize
}  // namespace resnet_fast
