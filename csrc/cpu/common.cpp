// Argument checks shared by the CPU kernels (see common.h).
#include "common.h"

#include <ATen/Version.h>

#include <string>

namespace resnet_fast::cpu {

namespace {

const char* format_name(bool channels_last) { return channels_last ? "channels_last" : "contiguous (NCHW)"; }

bool dense_in(const Tensor& t, bool channels_last) {
  return channels_last ? t.is_contiguous(at::MemoryFormat::ChannelsLast) : t.is_contiguous();
}

}  // namespace

ArgChecker::ArgChecker(const char* op, const Tensor& y) : op_(op), y_(y) {
  TORCH_CHECK(y.defined(), op, ": y must be a defined tensor");
  TORCH_CHECK(y.dim() == 4, op, ": expected y to be 4-D (N, C, H, W), got ", y.dim(), "-D of shape ", y.sizes());
  const auto dtype = y.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": expected y to be float32, float64, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(y.device().is_cpu(), op, ": the CPU kernel got y on ", y.device());
  const bool nchw = y.is_contiguous();
  TORCH_CHECK(nchw || y.is_contiguous(at::MemoryFormat::ChannelsLast), op,
              ": expected y to be contiguous or channels_last contiguous, got strides ", y.strides(),
              " for shape ", y.sizes(), " (call .contiguous() first)");
  const int64_t hw = y.size(2) * y.size(3);
  // With H*W == 1 both layouts are the same bytes: take the loops vectorized over C.
  geo_ = Geometry{y.size(0), y.size(1), hw, !nchw || hw == 1};
  acc_ = dtype == at::kDouble ? at::kDouble : at::kFloat;
}

void ArgChecker::activation(const char* name, const Tensor& t) const {
  TORCH_CHECK(t.defined(), op_, ": ", name, " must be a defined tensor");
  TORCH_CHECK(t.sizes() == y_.sizes(), op_, ": expected ", name, " to have the shape of y ", y_.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == y_.scalar_type(), op_, ": expected ", name, " to have the dtype of y (",
              y_.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == y_.device(), op_, ": expected ", name, " on ", y_.device(), " like y, got ", t.device());
  TORCH_CHECK(dense_in(t, geo_.channels_last), op_, ": expected ", name, " to have the memory format of y (",
              format_name(geo_.channels_last), "), got strides ", t.strides());
}

void ArgChecker::activation(const char* name, const OptTensor& t) const {
  if (given(t)) activation(name, *t);
}

void ArgChecker::coefficient(const char* name, const Tensor& t, at::IntArrayRef expected, const char* what) const {
  TORCH_CHECK(t.defined(), op_, ": ", name, " must be a defined tensor");
  TORCH_CHECK(t.sizes() == expected, op_, ": expected ", name, " to have shape ", expected, " ", what, ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == acc_, op_, ": expected ", name, " to be ", acc_, " (the accumulation dtype of ",
              y_.scalar_type(), " inputs), got ", t.scalar_type());
  TORCH_CHECK(t.device() == y_.device(), op_, ": expected ", name, " on ", y_.device(), " like y, got ", t.device());
  TORCH_CHECK(t.is_contiguous(), op_, ": expected ", name, " to be contiguous, got strides ", t.strides());
}

void ArgChecker::per_sample(const char* name, const Tensor& t) const {
  coefficient(name, t, {geo_.N, geo_.C}, "(N, C)");
}

void ArgChecker::per_channel(const char* name, const Tensor& t) const {
  coefficient(name, t, {geo_.C}, "(C,)");
}

void ArgChecker::per_channel(const char* name, const OptTensor& t) const {
  if (given(t)) per_channel(name, *t);
}

void ArgChecker::all_or_none(std::initializer_list<std::pair<const char*, const OptTensor*>> args) const {
  const bool first = given(*args.begin()->second);
  for (const auto& [name, t] : args) {
    TORCH_CHECK(given(*t) == first, op_, ": ", args.begin()->first, " and ", name,
                " must be given together (got ", args.begin()->first, first ? "" : " = None", " and ", name,
                given(*t) ? "" : " = None", ")");
  }
}

void ArgChecker::needs(const char* name, bool name_given, const char* needed_name, bool needed_given) const {
  TORCH_CHECK(!name_given || needed_given, op_, ": ", name, " was given without ", needed_name, ", which it needs");
}

void check_pre_activation(const ArgChecker& check, const PreActArgs& args) {
  check.per_sample("scale", args.scale);
  check.per_sample("shift", args.shift);
  check.activation("residual", args.residual);
  check.all_or_none({{"res_scale", &args.res_scale}, {"res_shift", &args.res_shift}});
  check.needs("res_scale", given(args.res_scale), "residual", given(args.residual));
  check.per_channel("res_scale", args.res_scale);
  check.per_channel("res_shift", args.res_shift);
}

// Chosen once per process, as torch chooses its own kernels: at::get_cpu_capability()
// honours ATEN_CPU_CAPABILITY and the CPU's features (an AVX512 capability implies AVX2).
const Kernels& kernels() {
  static const Kernels* const chosen = [] {
    const std::string capability = at::get_cpu_capability();
    const bool avx2 = capability == "AVX2" || capability == "AVX512";
    return avx2 && kAvx2Kernels != nullptr ? kAvx2Kernels : &kGenericKernels;
  }();
  return *chosen;
}

std::vector<double> sum_over_n(const double* nc, int64_t N, int64_t C) {
  std::vector<double> out(C, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) out[c] += nc[n * C + c];
  }
  return out;
}

void copy_from_double(const double* src, const Tensor& dst) {
  AT_DISPATCH_FLOATING_TYPES(dst.scalar_type(), "copy_from_double", [&] {
    scalar_t* out = dst.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < dst.numel(); ++i) out[i] = static_cast<scalar_t>(src[i]);
  });
}

}  // namespace resnet_fast::cpu
