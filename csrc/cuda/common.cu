// Host helpers shared by the CUDA primitives: argument validation and device queries.
#include "common.cuh"
#include "elementwise.cuh"
#include "reduce.cuh"

#include <algorithm>

#include <c10/core/MemoryFormat.h>
#include <c10/cuda/CUDAFunctions.h>

namespace resnet_fast {
namespace cuda {

ActivationInfo check_activation(const char* op, const char* name, const at::Tensor& y) {
  TORCH_CHECK(y.is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ", y.device());
  TORCH_CHECK(y.dim() == 4, op, ": ", name, " must be 4-D (N, C, H, W), got shape ", y.sizes());
  const auto dtype = y.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op, ": ",
              name, " must be float32, float64, float16 or bfloat16, got ", dtype);
  ActivationInfo info{Layout::NCHW, y.size(0), y.size(1), y.size(2) * y.size(3)};
  if (y.is_contiguous()) return info;
  TORCH_CHECK(y.is_contiguous(at::MemoryFormat::ChannelsLast), op, ": ", name,
              " must be contiguous or channels_last-contiguous, got strides ", y.strides(), " for shape ", y.sizes());
  info.layout = Layout::NHWC;
  return info;
}

void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& y,
                const ActivationInfo& info) {
  TORCH_CHECK(t.device() == y.device(), op, ": ", name, " must be on ", y.device(), " like y, got ", t.device());
  TORCH_CHECK(t.sizes() == y.sizes(), op, ": ", name, " must have y's shape ", y.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == y.scalar_type(), op, ": ", name, " must have y's dtype ", y.scalar_type(), ", got ",
              t.scalar_type());
  const auto format = info.layout == Layout::NCHW ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
  TORCH_CHECK(t.is_contiguous(format), op, ": ", name, " must be laid out like y (",
              info.layout == Layout::NCHW ? "contiguous" : "channels_last", "), got strides ", t.strides(),
              "; call .contiguous(memory_format=...) first");
}

at::ScalarType acc_scalar_type(const at::Tensor& y) {
  return y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_coef(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& y) {
  TORCH_CHECK(t.device() == y.device(), op, ": ", name, " must be on ", y.device(), " like y, got ", t.device());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == acc_scalar_type(y), op, ": ", name, " must be ", acc_scalar_type(y),
              " (the accumulation dtype of ", y.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides());
}

void check_coef(const char* op, const char* name, const std::optional<at::Tensor>& t, at::IntArrayRef shape,
                const at::Tensor& y) {
  if (t.has_value()) check_coef(op, name, *t, shape, y);
}

void check_together(const char* op, const char* what, const std::optional<at::Tensor>& a, const char* other,
                    const std::optional<at::Tensor>& b) {
  TORCH_CHECK(a.has_value() == b.has_value(), op, ": ", what, " and ", other, " must be given together");
}

void check_requires(const char* op, const char* what, bool given, const char* needed, bool needed_given) {
  TORCH_CHECK(!given || needed_given, op, ": ", what, " needs ", needed);
}

void check_pre_activation(const char* op, const at::Tensor& y, const ActivationInfo& info, const at::Tensor& scale,
                          const at::Tensor& shift, const std::optional<at::Tensor>& residual,
                          const std::optional<at::Tensor>& res_scale, const std::optional<at::Tensor>& res_shift) {
  check_coef(op, "scale", scale, {info.N, info.C}, y);
  check_coef(op, "shift", shift, {info.N, info.C}, y);
  if (residual.has_value()) check_like(op, "residual", *residual, y, info);
  check_together(op, "res_scale", res_scale, "res_shift", res_shift);
  check_requires(op, "res_scale", res_scale.has_value(), "residual", residual.has_value());
  check_coef(op, "res_scale", res_scale, {info.C}, y);
  check_coef(op, "res_shift", res_shift, {info.C}, y);
}

// (ATen/cuda/CUDAContext.h would need the cuSPARSE/cuBLAS headers, which a bare toolkit
// may lack; the runtime query is enough.)
int sm_count() {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  return count;
}

FlatGeom flat_geom(const ActivationInfo& info, int64_t n_chunk) {
  FlatGeom g;
  g.numel = static_cast<uint32_t>(n_chunk * info.C * info.HW);  // <= kMaxChunkElements
  g.C = static_cast<uint32_t>(info.C);
  g.HW = static_cast<uint32_t>(info.HW);
  g.div_c = at::cuda::detail::IntDivider<uint32_t>(g.C);
  g.div_hw = at::cuda::detail::IntDivider<uint32_t>(g.HW);
  return g;
}

}  // namespace cuda
}  // namespace resnet_fast
