// scale_shift_act kernels: the forward epilogue and its two backward passes (ops:
// scale_shift_act.cpp, scale_shift_act_backward.cpp, where the math is derived).
//
// All three recompute the pre-activation z = y * scale[n,c] + shift[n,c] + R from y (and
// residual) per vector (PreActivation in vec.h) instead of reading a saved z or mask, and
// walk the activation once: NCHW by runs of (n, c) planes vectorized along HW with
// broadcast coefficients, NHWC by rows vectorized along C with coefficient slices loaded
// from the (N, C) / (C,) tables, which stay in L1/L2 (for_each_vector / sum_over_hw).
#pragma once

#include "vec.h"

namespace resnet_fast::cpu::RESNET_FAST_ISA {

// out = act(z).
inline void scale_shift_act_kernel(const Geometry& g, const PreActArgs& args, const Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.y.scalar_type(), "resnet_fast::scale_shift_act", [&] {
    using Vec = AccVec<scalar_t>;
    const PreActivation<scalar_t> pre(args);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for_each_vector<acc_t<scalar_t>>(g, [=](int64_t off, int64_t count, const auto& k) {
      Vec z = pre.z(load(pre.y + off, count), pre.load_residual(off, count), k, count);
      if (pre.relu) z = at::vec::maximum(z, Vec(0));  // NaN-propagating, as torch.relu
      store(o + off, z, count);
    });
  });
}

// sums (K, N, C): sum_hw g, sum_hw g * (y - center[c]) and, with res_center,
// sum_hw g * (residual - res_center[c]); g itself into masked_grad when given.
inline void backward_reduce_kernel(const Geometry& g, const PreActArgs& args, const Tensor& grad_out,
                                   const Tensor& center, const OptTensor& res_center, double* sums,
                                   const Tensor* masked_grad) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.y.scalar_type(), "resnet_fast::bwd_reduce", [&] {
    using acc = acc_t<scalar_t>;
    using Vec = AccVec<scalar_t>;
    const PreActivation<scalar_t> pre(args);
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const acc* ctr = center.const_data_ptr<acc>();
    const acc* res_ctr = data_or_null<acc>(res_center);
    scalar_t* mg = masked_grad != nullptr ? masked_grad->mutable_data_ptr<scalar_t>() : nullptr;
    auto run = [&](auto num_sums) {
      constexpr int K = decltype(num_sums)::value;
      sum_over_hw<acc, K>(g, sums, [=](int64_t off, int64_t count, const auto& k, Vec(&contrib)[K]) {
        const Vec yv = load(pre.y + off, count);
        const Vec rv = pre.load_residual(off, count);
        const Vec gv = pre.masked_grad(load(go + off, count), yv, rv, k, count);
        if (mg != nullptr) store(mg + off, gv, count);
        contrib[0] = gv;
        contrib[1] = gv * (yv - k.per_channel(ctr, count));
        if constexpr (K == 3) contrib[2] = gv * (rv - k.per_channel(res_ctr, count));
      });
    };
    if (res_ctr != nullptr) {
      run(std::integral_constant<int, 3>{});
    } else {
      run(std::integral_constant<int, 2>{});
    }
  });
}

// grad_y = k_g * g + k_0 + k_y * (y - center); grad_residual likewise with the res_ coefficients.
inline void backward_apply_kernel(const Geometry& g, const PreActArgs& args, const Tensor& grad_out,
                                  const ApplyArgs& coefs, const Tensor& grad_y, const Tensor* grad_residual) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.y.scalar_type(), "resnet_fast::bwd_apply", [&] {
    using acc = acc_t<scalar_t>;
    using Vec = AccVec<scalar_t>;
    const PreActivation<scalar_t> pre(args);
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const acc* kg = coefs.k_g.const_data_ptr<acc>();
    const acc* k0 = coefs.k_0.const_data_ptr<acc>();
    const acc* ky = coefs.k_y.const_data_ptr<acc>();
    const acc* ctr = coefs.center.const_data_ptr<acc>();
    const acc* rkg = data_or_null<acc>(coefs.res_k_g);
    const acc* rk0 = data_or_null<acc>(coefs.res_k_0);
    const acc* rkr = data_or_null<acc>(coefs.res_k_r);
    const acc* rctr = data_or_null<acc>(coefs.res_center);
    scalar_t* gy = grad_y.mutable_data_ptr<scalar_t>();
    scalar_t* gr = grad_residual != nullptr ? grad_residual->mutable_data_ptr<scalar_t>() : nullptr;
    for_each_vector<acc>(g, [=](int64_t off, int64_t count, const auto& k) {
      const Vec yv = load(pre.y + off, count);
      const Vec rv = pre.load_residual(off, count);
      const Vec gv = pre.masked_grad(load(go + off, count), yv, rv, k, count);
      // The reference's association: (k_g * g + k_0) + k_y * (y - center).
      const Vec dy = k.per_sample(kg, count) * gv + k.per_sample(k0, count) +
                     k.per_channel(ky, count) * (yv - k.per_channel(ctr, count));
      store(gy + off, dy, count);
      if (gr != nullptr) {
        const Vec dr = k.per_channel(rkg, count) * gv + k.per_channel(rk0, count) +
                       k.per_channel(rkr, count) * (rv - k.per_channel(rctr, count));
        store(gr + off, dr, count);
      }
    });
  });
}

}  // namespace resnet_fast::cpu::RESNET_FAST_ISA
