// bn_stats (CPU): per-channel batch statistics of y in one pass over memory.
//
//   mean[c]          = mean over (n, h, w) of y
//   var[c]           = biased variance over (n, h, w)
//   sample_mean[n,c] = mean over (h, w)                   (the SE squeeze comes for free)
//
// The kernel (bn_stats_kernel.h) returns per-(n, c) moments (mean_nc, M2_nc) in double; the
// channels then combine their N equal-count groups exactly, in a fixed order:
//     mean = sum_n mean_nc / N,   M2 = sum_n M2_nc + HW * sum_n (mean_nc - mean)^2.
// Bytes moved: N*C*HW*sizeof(y) read; (N + 2) * C acc values written.
#include "common.h"

#include <limits>

namespace resnet_fast::cpu {

void batch_moments(const Geometry& g, const Tensor& y, double* mean, double* var, double* mean_nc) {
  std::vector<double> m2_nc(g.N * g.C);
  kernels().bn_stats(g, y, mean_nc, m2_nc.data());
  // Sample-major loops (contiguous, vectorizable), each channel's terms still added in n order.
  std::fill(mean, mean + g.C, 0.0);
  for (int64_t n = 0; n < g.N; ++n) {
    const double* m = mean_nc + n * g.C;
    for (int64_t c = 0; c < g.C; ++c) mean[c] += m[c];
  }
  for (int64_t c = 0; c < g.C; ++c) mean[c] /= g.N;
  std::vector<double> between(g.C, 0.0);
  double* within = var;  // sum_n M2_nc, then the variance in place
  std::fill(within, within + g.C, 0.0);
  for (int64_t n = 0; n < g.N; ++n) {
    const double* m = mean_nc + n * g.C;
    const double* m2 = m2_nc.data() + n * g.C;
    for (int64_t c = 0; c < g.C; ++c) {
      const double d = m[c] - mean[c];
      within[c] += m2[c];
      between[c] += d * d;
    }
  }
  for (int64_t c = 0; c < g.C; ++c) var[c] = (within[c] + g.HW * between[c]) / static_cast<double>(g.N * g.HW);
}

namespace {

std::tuple<Tensor, Tensor, Tensor> bn_stats_cpu(const Tensor& y) {
  const ArgChecker check("resnet_fast::bn_stats", y);
  const Geometry& g = check.geometry();
  const auto options = y.options().dtype(check.acc_dtype());
  Tensor mean = at::empty({g.C}, options);
  Tensor var = at::empty({g.C}, options);
  Tensor sample_mean = at::empty({g.N, g.C}, options);
  if (g.numel() == 0) {  // as torch.var_mean / mean over empty dimensions: NaN
    const double nan = std::numeric_limits<double>::quiet_NaN();
    mean.fill_(nan);
    var.fill_(nan);
    sample_mean.fill_(nan);
    return {mean, var, sample_mean};
  }
  std::vector<double> channel_mean(g.C), channel_var(g.C), mean_nc(g.N * g.C);
  batch_moments(g, y, channel_mean.data(), channel_var.data(), mean_nc.data());
  copy_from_double(channel_mean.data(), mean);
  copy_from_double(channel_var.data(), var);
  copy_from_double(mean_nc.data(), sample_mean);
  return {mean, var, sample_mean};
}

}  // namespace
}  // namespace resnet_fast::cpu

TORCH_LIBRARY_IMPL(resnet_fast, CPU, m) { m.impl("bn_stats", &resnet_fast::cpu::bn_stats_cpu); }
