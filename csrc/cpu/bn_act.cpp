// bn_act_forward / bn_act_backward (CPU): a fused op's whole BatchNorm + activation in one call
// per direction, for the CPU backend without Squeeze-Excitation or SyncBN:
//
//   out = act(bn(y) + R),   R = bn_res(residual) (residual_bn) | residual | 0
//
// Why. resnet_fast/ops/_bn.py does the same on the four primitives: the same kernels and
// passes (bn_stats + scale_shift_act forward; backward_reduce + backward_apply backward), with
// the per-channel algebra between the passes (invstd, a, c0, the gradient coefficients) as
// ~30 small tensor ops from Python, each a dispatch and an allocation. At the 14x14 and 7x7
// stages that host work took as long as the kernels; here it is loops over C. One difference
// in passes: with a plain residual, backward_reduce also writes the masked gradient (the
// residual's gradient) and backward_apply reads it instead of grad_out, y and the residual.
//
// Math: _bn.py's module docstring with gate = 1 and ds = 0. Per-channel values are computed
// in the acc dtype in _bn.py's order of operations; sums over n are added in double.
// Schemas: below; the Python side (_bn.cpu_fused) decides when this path applies.
#include "common.h"
#include "output_cache.h"

#include <array>
#include <cmath>

namespace resnet_fast::cpu {
namespace {

// One BatchNorm's per-channel tensors (C,) in the acc dtype: bn(y) = a * y + c0.
struct Norm {
  Tensor mean, invstd, var, a, c0;
};

// t in the acc dtype, contiguous (t itself when it already is); undefined when not given.
Tensor acc_or_undefined(const OptTensor& t, at::ScalarType acc) {
  return given(t) ? t->to(acc).contiguous() : Tensor();
}

template <typename acc>
void fill_affine(const Norm& norm, const Tensor& weight, const Tensor& bias) {
  const int64_t C = norm.mean.numel();
  const acc* mean = norm.mean.const_data_ptr<acc>();
  const acc* invstd = norm.invstd.const_data_ptr<acc>();
  const acc* w = weight.defined() ? weight.const_data_ptr<acc>() : nullptr;
  const acc* b = bias.defined() ? bias.const_data_ptr<acc>() : nullptr;
  acc* a = norm.a.mutable_data_ptr<acc>();
  acc* c0 = norm.c0.mutable_data_ptr<acc>();
  for (int64_t c = 0; c < C; ++c) {
    a[c] = w != nullptr ? w[c] * invstd[c] : invstd[c];
    c0[c] = (b != nullptr ? b[c] : acc(0)) - mean[c] * a[c];
  }
}

// a and c0 from a BN's mean and invstd and its optional affine parameters.
Norm affine_of(const Tensor& mean, const Tensor& invstd, const OptTensor& weight, const OptTensor& bias) {
  const auto acc = mean.scalar_type();
  Norm norm{mean, invstd, Tensor(), at::empty_like(invstd), at::empty_like(invstd)};
  AT_DISPATCH_FLOATING_TYPES(acc, "resnet_fast::bn_act_affine", [&] {
    fill_affine<scalar_t>(norm, acc_or_undefined(weight, acc), acc_or_undefined(bias, acc));
  });
  return norm;
}

// The normalization of y: batch statistics (var: the unbiased batch variance, for the running
// statistics) or the running ones (var: running_var), as _bn.normalize.
Norm normalize(const Geometry& g, const Tensor& y, at::ScalarType acc, const OptTensor& weight,
               const OptTensor& bias, const OptTensor& running_mean, const OptTensor& running_var,
               bool use_batch_stats, double eps) {
  const auto options = y.options().dtype(acc);
  Tensor mean = at::empty({g.C}, options), var = at::empty({g.C}, options), invstd = at::empty({g.C}, options);
  std::vector<double> batch_mean, batch_var;
  if (use_batch_stats) {
    batch_mean.resize(g.C);
    batch_var.resize(g.C);
    std::vector<double> mean_nc(g.N * g.C);
    batch_moments(g, y, batch_mean.data(), batch_var.data(), mean_nc.data());
  } else {
    TORCH_CHECK(given(running_mean) && given(running_var),
                "resnet_fast::bn_act_forward: eval mode needs running_mean and running_var");
    mean.copy_(*running_mean);
    var.copy_(*running_var);
  }
  const int64_t count = g.N * g.HW;
  AT_DISPATCH_FLOATING_TYPES(acc, "resnet_fast::bn_act_normalize", [&] {
    scalar_t* m = mean.mutable_data_ptr<scalar_t>();
    scalar_t* v = var.mutable_data_ptr<scalar_t>();
    scalar_t* is = invstd.mutable_data_ptr<scalar_t>();
    // unbiased() in _bn.py: a Python float, rounded to the acc dtype by the tensor product.
    const auto bessel = static_cast<scalar_t>(static_cast<double>(count) / std::max<int64_t>(count - 1, 1));
    for (int64_t c = 0; c < g.C; ++c) {
      if (use_batch_stats) {
        m[c] = static_cast<scalar_t>(batch_mean[c]);
        v[c] = static_cast<scalar_t>(batch_var[c]);
      }
      is[c] = scalar_t(1) / std::sqrt(v[c] + static_cast<scalar_t>(eps));  // torch.rsqrt's 1 / sqrt
      if (use_batch_stats) v[c] = v[c] * bessel;
    }
  });
  Norm norm = affine_of(mean, invstd, weight, bias);
  norm.var = var;
  return norm;
}

// A BN's optional per-channel parameter: C values on y's device, floating point (any dtype:
// it is read in the acc dtype, as _bn.py's .to(acc)).
void check_bn_vector(const char* op, const char* name, const OptTensor& t, const Geometry& g, const Tensor& y) {
  if (!given(t)) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == g.C, op, ": expected ", name, " of shape (", g.C,
              ",) to match the input's channels, got ", t->sizes());
  TORCH_CHECK(t->device() == y.device(), op, ": ", name, " is on ", t->device(), ", y on ", y.device());
  TORCH_CHECK(t->is_floating_point(), op, ": ", name, " must be floating point, got ", t->scalar_type());
}

// (N, C) contiguous: every sample's row is `per_channel` (C,).
Tensor expand_nc(const Tensor& per_channel, int64_t n) {
  return per_channel.unsqueeze(0).expand({n, per_channel.numel()}).contiguous();
}

// The coefficients of z = y * scale + shift + bn_res(residual) that the kernels take
// (PreActArgs), from the BN of y and, when given, the residual's.
struct PreActCoefs {
  Tensor scale, shift;
  OptTensor res_scale, res_shift;

  PreActCoefs(const Norm& norm, const Norm* res, int64_t n)
      : scale(expand_nc(norm.a, n)),
        shift(expand_nc(norm.c0, n)),
        res_scale(res != nullptr ? OptTensor(res->a) : std::nullopt),
        res_shift(res != nullptr ? OptTensor(res->c0) : std::nullopt) {}

  PreActArgs args(const Tensor& y, const OptTensor& residual, bool relu) const {
    return PreActArgs{y, scale, shift, residual, res_scale, res_shift, relu};
  }
};

using Outputs7 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

Outputs7 bn_act_forward_cpu(const Tensor& y, const OptTensor& weight, const OptTensor& bias,
                            const OptTensor& running_mean, const OptTensor& running_var, const OptTensor& residual,
                            const OptTensor& res_weight, const OptTensor& res_bias,
                            const OptTensor& res_running_mean, const OptTensor& res_running_var, bool residual_bn,
                            bool use_batch_stats, double eps, bool relu) {
  const char* op = "resnet_fast::bn_act_forward";
  const ArgChecker check(op, y);
  const Geometry& g = check.geometry();
  check.activation("residual", residual);
  for (const auto& [name, t] : {std::pair{"weight", &weight}, {"bias", &bias}, {"running_mean", &running_mean},
                                {"running_var", &running_var}, {"res_weight", &res_weight}, {"res_bias", &res_bias},
                                {"res_running_mean", &res_running_mean}, {"res_running_var", &res_running_var}}) {
    check_bn_vector(op, name, *t, g, y);
  }
  check.needs("residual_bn", residual_bn, "residual", given(residual));
  const auto acc = check.acc_dtype();
  const Norm norm = normalize(g, y, acc, weight, bias, running_mean, running_var, use_batch_stats, eps);
  Norm res;
  if (residual_bn) {
    res = normalize(g, *residual, acc, res_weight, res_bias, res_running_mean, res_running_var, use_batch_stats, eps);
  }
  const PreActCoefs coefs(norm, residual_bn ? &res : nullptr, g.N);
  const PreActArgs args = coefs.args(y, residual, relu);
  Tensor out = empty_activation_like(y);
  if (y.numel() > 0) kernels().scale_shift_act(g, args, out);
  const Tensor empty = at::empty({0}, y.options().dtype(acc));
  if (!residual_bn) return {out, norm.mean, norm.invstd, norm.var, empty, empty.clone(), empty.clone()};
  return {out, norm.mean, norm.invstd, norm.var, res.mean, res.invstd, res.var};
}

// Gradient coefficients (_bn.bn_act_backward's k_g, k_0, k_y, res_k_*) and the affine
// parameters' gradients from the per-channel sums.
template <typename acc>
struct BackwardAlgebra {
  int64_t N, C;
  acc count;
  bool use_batch_stats;

  // k_g = a, k_0 = -(a * sum_dz / count) (both (N, C)), k_y = -a * invstd^2 * sum_dz_y / count.
  void main(const Norm& norm, const acc* sum_dz, const acc* sum_dz_y, const Tensor& k_g, const Tensor& k_0,
            const Tensor& k_y) const {
    const acc* a = norm.a.const_data_ptr<acc>();
    const acc* invstd = norm.invstd.const_data_ptr<acc>();
    acc* kg = k_g.mutable_data_ptr<acc>();
    acc* k0 = k_0.mutable_data_ptr<acc>();
    acc* ky = k_y.mutable_data_ptr<acc>();
    for (int64_t c = 0; c < C; ++c) {
      k0[c] = use_batch_stats ? acc(0) - a[c] * sum_dz[c] / count : acc(0);
      ky[c] = use_batch_stats ? -a[c] * invstd[c] * invstd[c] * sum_dz_y[c] / count : acc(0);
      kg[c] = a[c];
    }
    for (int64_t n = 1; n < N; ++n) {
      std::copy(kg, kg + C, kg + n * C);
      std::copy(k0, k0 + C, k0 + n * C);
    }
  }

  // The shortcut's coefficients: identity (1, 0, 0, centered at 0) or its BN's.
  void residual(const Norm* res, const acc* sum_g_all, const acc* sum_g_res, const std::array<Tensor, 4>& k) const {
    acc* kg = k[0].mutable_data_ptr<acc>();
    acc* k0 = k[1].mutable_data_ptr<acc>();
    acc* kr = k[2].mutable_data_ptr<acc>();
    acc* center = k[3].mutable_data_ptr<acc>();
    for (int64_t c = 0; c < C; ++c) {
      if (res == nullptr) {
        kg[c] = acc(1);
        k0[c] = kr[c] = center[c] = acc(0);
        continue;
      }
      const acc a = res->a.const_data_ptr<acc>()[c];
      const acc invstd = res->invstd.const_data_ptr<acc>()[c];
      kg[c] = a;
      k0[c] = use_batch_stats ? -a * sum_g_all[c] / count : acc(0);
      kr[c] = use_batch_stats ? -a * invstd * invstd * sum_g_res[c] / count : acc(0);
      center[c] = res->mean.const_data_ptr<acc>()[c];
    }
  }
};

using Outputs6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// needs: gradients wanted for (y, weight, bias, residual, res_weight, res_bias); the others
// come back empty.
Outputs6 bn_act_backward_cpu(const Tensor& grad_out_any, const Tensor& y, const OptTensor& weight,
                             const OptTensor& bias, const Tensor& mean, const Tensor& invstd,
                             const OptTensor& residual, const OptTensor& res_weight, const OptTensor& res_bias,
                             const OptTensor& res_mean, const OptTensor& res_invstd, bool use_batch_stats,
                             bool relu, std::array<bool, 6> needs) {
  const char* op = "resnet_fast::bn_act_backward";
  const ArgChecker check(op, y);
  const Geometry& g = check.geometry();
  for (const auto& [name, t] : {std::pair{"weight", &weight}, {"bias", &bias}, {"res_weight", &res_weight},
                                {"res_bias", &res_bias}}) {
    check_bn_vector(op, name, *t, g, y);
  }
  // The kernels index grad_out like y (as _bn.match_layout).
  const Tensor grad_out = grad_out_any.contiguous(g.channels_last && g.HW > 1 ? at::MemoryFormat::ChannelsLast
                                                                               : at::MemoryFormat::Contiguous);
  check.activation("grad_out", grad_out);
  check.activation("residual", residual);
  check.per_channel("mean", mean);
  check.per_channel("invstd", invstd);
  check.all_or_none({{"res_mean", &res_mean}, {"res_invstd", &res_invstd}});
  check.needs("res_mean", given(res_mean), "residual", given(residual));
  check.per_channel("res_mean", res_mean);
  check.per_channel("res_invstd", res_invstd);
  const bool residual_bn = given(res_mean);
  const auto acc_type = check.acc_dtype();
  const auto options = y.options().dtype(acc_type);

  const Norm norm = affine_of(mean, invstd, weight, bias);
  Norm res;
  if (residual_bn) res = affine_of(*res_mean, *res_invstd, res_weight, res_bias);
  const PreActCoefs coefs(norm, residual_bn ? &res : nullptr, g.N);
  const PreActArgs args = coefs.args(y, residual, relu);

  const Tensor empty = at::empty({0}, y.options());
  // A plain residual's gradient is the masked gradient g itself: the reduction pass writes it,
  // and grad_y's pass then reads g and y instead of grad_out, y and the residual (one pass over
  // an activation fewer than the general apply, which writes grad_residual from all three).
  const bool plain_residual_grad = needs[3] && given(residual) && !residual_bn;
  Tensor grad_residual = plain_residual_grad ? empty_activation_like(y) : empty.clone();
  const int64_t NC = g.N * g.C;
  std::vector<double> sums((residual_bn ? 3 : 2) * NC, 0.0);  // (K, N, C)
  if (g.numel() > 0) {
    kernels().backward_reduce(g, args, grad_out, mean, res_mean, sums.data(),
                              plain_residual_grad ? &grad_residual : nullptr);
  }
  auto to_acc = [&](const std::vector<double>& v) {
    Tensor t = at::empty({g.C}, options);
    copy_from_double(v.data(), t);
    return t;
  };
  const Tensor sum_dz = to_acc(sum_over_n(sums.data(), g.N, g.C));  // = sum_g_all (no gate)
  const Tensor sum_dz_y = to_acc(sum_over_n(sums.data() + NC, g.N, g.C));
  const Tensor sum_g_res = residual_bn ? to_acc(sum_over_n(sums.data() + 2 * NC, g.N, g.C)) : Tensor();

  auto param_grad = [&](bool wanted, const Tensor& value, const OptTensor& param) {
    // A copy: grad_bias and grad_res_bias are the same sums, and outputs must not alias.
    return wanted && given(param) ? value.to(param->scalar_type(), false, /*copy=*/true) : empty.clone();
  };
  Tensor grad_weight = param_grad(needs[1], sum_dz_y * invstd, weight);
  Tensor grad_bias = param_grad(needs[2], sum_dz, bias);
  Tensor grad_res_weight = residual_bn ? param_grad(needs[4], sum_g_res * *res_invstd, res_weight) : empty.clone();
  Tensor grad_res_bias = residual_bn ? param_grad(needs[5], sum_dz, res_bias) : empty.clone();

  Tensor grad_y = empty.clone();
  if (needs[0] || (needs[3] && !plain_residual_grad)) {
    const bool with_res = needs[3] && given(residual) && !plain_residual_grad;
    const Tensor k_g = at::empty({g.N, g.C}, options), k_0 = at::empty({g.N, g.C}, options);
    const Tensor k_y = at::empty({g.C}, options);
    std::array<Tensor, 4> res_k;
    if (with_res) {
      for (Tensor& t : res_k) t = at::empty({g.C}, options);
    }
    AT_DISPATCH_FLOATING_TYPES(acc_type, "resnet_fast::bn_act_backward", [&] {
      const BackwardAlgebra<scalar_t> algebra{g.N, g.C, static_cast<scalar_t>(g.N * g.HW), use_batch_stats};
      algebra.main(norm, sum_dz.const_data_ptr<scalar_t>(), sum_dz_y.const_data_ptr<scalar_t>(), k_g, k_0, k_y);
      if (with_res) {
        algebra.residual(residual_bn ? &res : nullptr, sum_dz.const_data_ptr<scalar_t>(),
                         residual_bn ? sum_g_res.const_data_ptr<scalar_t>() : nullptr, res_k);
      }
    });
    grad_y = empty_activation_like(y);
    if (with_res) grad_residual = empty_activation_like(y);
    const OptTensor rkg = with_res ? OptTensor(res_k[0]) : std::nullopt;
    const OptTensor rk0 = with_res ? OptTensor(res_k[1]) : std::nullopt;
    const OptTensor rkr = with_res ? OptTensor(res_k[2]) : std::nullopt;
    const OptTensor rctr = with_res ? OptTensor(res_k[3]) : std::nullopt;
    if (g.numel() > 0) {
      const ApplyArgs apply{k_g, k_0, k_y, mean, rkg, rk0, rkr, rctr};
      if (plain_residual_grad) {  // from the masked gradient: no mask to recompute, no residual
        const OptTensor no_residual;
        kernels().backward_apply(g, coefs.args(y, no_residual, /*relu=*/false), grad_residual, apply, grad_y,
                                 nullptr);
      } else {
        kernels().backward_apply(g, args, grad_out, apply, grad_y, with_res ? &grad_residual : nullptr);
      }
    }
    if (!needs[0]) grad_y = empty.clone();
  }
  return {grad_y, grad_weight, grad_bias, grad_residual, grad_res_weight, grad_res_bias};
}

}  // namespace
}  // namespace resnet_fast::cpu

TORCH_LIBRARY_FRAGMENT(resnet_fast, m) {
  // out = act(bn(y) + R), R = bn_res(residual) when residual_bn, residual when given, else 0;
  // bn with batch statistics when use_batch_stats, else the running ones. Returns the mean and
  // invstd used and var (the unbiased batch variance, or running_var), and the same three of
  // the residual's BN (empty without residual_bn).
  m.def(
      "bn_act_forward(Tensor y, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, "
      "Tensor? residual, Tensor? res_weight, Tensor? res_bias, Tensor? res_running_mean, "
      "Tensor? res_running_var, bool residual_bn, bool use_batch_stats, float eps, bool relu) -> "
      "(Tensor out, Tensor mean, Tensor invstd, Tensor var, Tensor res_mean, Tensor res_invstd, Tensor res_var)");
  // Gradients of bn_act_forward's out for (y, weight, bias, residual, res_weight, res_bias),
  // each computed when `needs` says so, else empty; res_mean / res_invstd: the residual's BN.
  m.def(
      "bn_act_backward(Tensor grad_out, Tensor y, Tensor? weight, Tensor? bias, Tensor mean, Tensor invstd, "
      "Tensor? residual, Tensor? res_weight, Tensor? res_bias, Tensor? res_mean, Tensor? res_invstd, "
      "bool use_batch_stats, bool relu, bool[6] needs) -> (Tensor grad_y, Tensor grad_weight, Tensor grad_bias, "
      "Tensor grad_residual, Tensor grad_res_weight, Tensor grad_res_bias)");
}

TORCH_LIBRARY_IMPL(resnet_fast, CPU, m) {
  m.impl("bn_act_forward", &resnet_fast::cpu::bn_act_forward_cpu);
  m.impl("bn_act_backward", &resnet_fast::cpu::bn_act_backward_cpu);
}
