// LayerNorm (one affine, or the parallel residual's two sharing their statistics) and
// bias + exact GELU, forward and backward.
#include "common.h"

namespace sinklm {
namespace {

// LayerNorm: x [N, D] -> xhat = (x - mean) * rstd, rstd = 1/sqrt(var + eps), and K affines
// y_k = xhat * gamma_k + beta_k (K = 1, or 2 for the parallel residual's two LayerNorms of
// the same x). Backward, with g = sum_k dy_k * gamma_k:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
//   dgamma_k = sum over rows of dy_k * xhat, dbeta_k = sum over rows of dy_k.


template <int K>
void LayerNormK(void* kernel, TF_OpKernelContext* context) {
  const float eps = static_cast<Attrs*>(kernel)->eps;
  Ctx c(context);
  In x, gamma[K], beta[K];
  if (!c.input(0, &x)) return;
  for (int k = 0; k < K; k++)
    if (!c.input(1 + 2 * k, &gamma[k]) || !c.input(2 + 2 * k, &beta[k])) return;
  if (x.shape.size() != 2) return (void)c.fail("SinklmLayerNorm: x must be [N, D]");
  const int64_t N = x.dim(0), D = x.dim(1);
  for (int k = 0; k < K; k++)
    if (gamma[k].size != D || beta[k].size != D) return (void)c.fail("SinklmLayerNorm: gamma and beta must have D elements");
  float* y[K];
  for (int k = 0; k < K; k++)
    if (!(y[k] = c.output(k, {N, D}))) return;
  float* xhat = c.output(K, {N, D});
  float* rstd = xhat ? c.output(K + 1, {N}) : nullptr;
  if (!rstd) return;
  ParallelFor(Blocks(N), [&](int64_t blk) {
    for (int64_t r = blk * kRowBlock; r < std::min(N, (blk + 1) * kRowBlock); r++) {
      const float* xr = x.data + r * D;
      float sum = 0;
      for (int64_t d = 0; d < D; d++) sum += xr[d];
      const float mean = sum / D;
      float var = 0;
      for (int64_t d = 0; d < D; d++) var += (xr[d] - mean) * (xr[d] - mean);
      const float rs = 1.0f / std::sqrt(var / D + eps);
      rstd[r] = rs;
      float* hr = xhat + r * D;
      for (int64_t d = 0; d < D; d++) hr[d] = (xr[d] - mean) * rs;
      for (int k = 0; k < K; k++) {
        float* yr = y[k] + r * D;
        for (int64_t d = 0; d < D; d++) yr[d] = hr[d] * gamma[k].data[d] + beta[k].data[d];
      }
    }
  });
}

// Inputs: xhat, rstd, then (gamma_k, dy_k) for each k. Outputs: dx, then (dgamma_k, dbeta_k).
template <int K>
void LayerNormGradK(void*, TF_OpKernelContext* context) {
  Ctx c(context);
  In xhat, rstd, gamma[K], dy[K];
  if (!c.input(0, &xhat) || !c.input(1, &rstd)) return;
  for (int k = 0; k < K; k++)
    if (!c.input(2 + 2 * k, &gamma[k]) || !c.input(3 + 2 * k, &dy[k])) return;
  const int64_t N = xhat.dim(0), D = xhat.dim(1);
  for (int k = 0; k < K; k++)
    if (dy[k].size != N * D || gamma[k].size != D) return (void)c.fail("SinklmLayerNormGrad: shapes do not match");
  float* dx = c.output(0, {N, D});
  if (!dx) return;
  float* dgamma[K];
  float* dbeta[K];
  for (int k = 0; k < K; k++) {
    if (!(dgamma[k] = c.output(1 + 2 * k, {D})) || !(dbeta[k] = c.output(2 + 2 * k, {D}))) return;
  }
  const int64_t T = Blocks(N);
  std::vector<float> part(static_cast<size_t>(T) * 2 * K * D, 0.0f);
  ParallelFor(T, [&](int64_t w) {
    float* acc = part.data() + static_cast<size_t>(w) * 2 * K * D;
    std::vector<float> g(D);
    for (int64_t r = w * kRowBlock; r < std::min(N, (w + 1) * kRowBlock); r++) {
      const float* hr = xhat.data + r * D;
      for (int64_t d = 0; d < D; d++) g[d] = 0;
      for (int k = 0; k < K; k++) {
        const float* dyr = dy[k].data + r * D;
        float* ag = acc + 2 * k * D;
        float* ab = ag + D;
        for (int64_t d = 0; d < D; d++) {
          g[d] += dyr[d] * gamma[k].data[d];
          ag[d] += dyr[d] * hr[d];
          ab[d] += dyr[d];
        }
      }
      float mg = 0, mgh = 0;
      for (int64_t d = 0; d < D; d++) {
        mg += g[d];
        mgh += g[d] * hr[d];
      }
      mg /= D;
      mgh /= D;
      const float rs = rstd.data[r];
      float* dxr = dx + r * D;
      for (int64_t d = 0; d < D; d++) dxr[d] = rs * (g[d] - mg - hr[d] * mgh);
    }
  });
  for (int k = 0; k < K; k++) {
    for (int64_t d = 0; d < D; d++) {
      float sg = 0, sb = 0;
      for (int64_t w = 0; w < T; w++) {
        sg += part[(static_cast<size_t>(w) * 2 * K + 2 * k) * D + d];
        sb += part[(static_cast<size_t>(w) * 2 * K + 2 * k + 1) * D + d];
      }
      dgamma[k][d] = sg;
      dbeta[k][d] = sb;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Bias + exact GELU: y = u * Phi(u), u = x + b, Phi(u) = (1 + erf(u / sqrt 2)) / 2.
// Backward: du = dy * (Phi(u) + u * exp(-u^2 / 2) / sqrt(2 pi)); dx = du, db = column sums.

void BiasGelu(void*, TF_OpKernelContext* context) {
  Ctx c(context);
  In x, b;
  if (!c.input(0, &x) || !c.input(1, &b)) return;
  const int64_t F = b.size;
  if (x.shape.empty() || x.dim(-1) != F) return (void)c.fail("SinklmBiasGelu: the bias must match x's last axis");
  const int64_t N = x.size / F;
  float* y = c.output(0, x.shape);
  if (!y) return;
  ParallelFor(Blocks(N), [&](int64_t blk) {
    for (int64_t r = blk * kRowBlock; r < std::min(N, (blk + 1) * kRowBlock); r++) {
      const float* xr = x.data + r * F;
      float* yr = y + r * F;
      for (int64_t j = 0; j < F; j++) {
        const float u = xr[j] + b.data[j];
        yr[j] = u * 0.5f * (1.0f + Erf(u * 0.70710678118654752f));
      }
    }
  });
}

void BiasGeluGrad(void*, TF_OpKernelContext* context) {
  Ctx c(context);
  In dy, x, b;
  if (!c.input(0, &dy) || !c.input(1, &x) || !c.input(2, &b)) return;
  const int64_t F = b.size;
  if (x.size != dy.size || x.dim(-1) != F) return (void)c.fail("SinklmBiasGeluGrad: shapes do not match");
  const int64_t N = x.size / F;
  float* dx = c.output(0, x.shape);
  float* db = dx ? c.output(1, {F}) : nullptr;
  if (!db) return;
  const int64_t T = Blocks(N);
  std::vector<float> part(static_cast<size_t>(T) * F, 0.0f);
  ParallelFor(T, [&](int64_t w) {
    float* acc = part.data() + static_cast<size_t>(w) * F;
    for (int64_t r = w * kRowBlock; r < std::min(N, (w + 1) * kRowBlock); r++) {
      const float* xr = x.data + r * F;
      const float* dyr = dy.data + r * F;
      float* dxr = dx + r * F;
      for (int64_t j = 0; j < F; j++) {
        const float u = xr[j] + b.data[j];
        const float cdf = 0.5f * (1.0f + Erf(u * 0.70710678118654752f));
        const float pdf = Exp(-0.5f * u * u) * 0.39894228040143268f;
        const float g = dyr[j] * (cdf + u * pdf);
        dxr[j] = g;
        acc[j] += g;
      }
    }
  });
  for (int64_t j = 0; j < F; j++) {
    float s = 0;
    for (int64_t w = 0; w < T; w++) s += part[static_cast<size_t>(w) * F + j];
    db[j] = s;
  }
}

}  // namespace

void LayerNormCompute(void* k, TF_OpKernelContext* c) { LayerNormK<1>(k, c); }
void LayerNorm2Compute(void* k, TF_OpKernelContext* c) { LayerNormK<2>(k, c); }
void LayerNormGradCompute(void* k, TF_OpKernelContext* c) { LayerNormGradK<1>(k, c); }
void LayerNorm2GradCompute(void* k, TF_OpKernelContext* c) { LayerNormGradK<2>(k, c); }
void BiasGeluCompute(void* k, TF_OpKernelContext* c) { BiasGelu(k, c); }
void BiasGeluGradCompute(void* k, TF_OpKernelContext* c) { BiasGeluGrad(k, c); }

}  // namespace sinklm
