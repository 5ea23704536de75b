// AdamW over the flat vector of all parameters in one pass (PyTorch's update, decoupled weight
// decay on the entries the mask marks), where tfjs would make a dozen passes of separate ops:
//   g = scale * grad;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p = p - lr * m / bc1 / (sqrt(v / bc2) + eps) - lr * wd * mask * p
// The hyper-parameters come as a tensor [lr, b1, b2, eps, wd, bc1, bc2, scale] (scale: the
// gradient clip's factor, computed on the device), so a changing learning rate is an input,
// not a new kernel per step.
#include "common.h"

namespace sinklm {
namespace {

constexpr int64_t kChunk = 1 << 16;

void Update(void*, TF_OpKernelContext* context) {
  Ctx c(context);
  In p, g, m, v, mask, hyper;
  if (!c.input(0, &p) || !c.input(1, &g) || !c.input(2, &m) || !c.input(3, &v) || !c.input(4, &mask) || !c.input(5, &hyper)) return;
  const int64_t n = p.size;
  if (g.size != n || m.size != n || v.size != n || mask.size != n) return (void)c.fail("SinklmAdamW: p, g, m, v and mask must have the same size");
  if (hyper.size != 8) return (void)c.fail("SinklmAdamW: hyper must be [lr, beta1, beta2, eps, weight_decay, bc1, bc2, scale]");
  float* po = c.output(0, p.shape);
  float* mo = po ? c.output(1, p.shape) : nullptr;
  float* vo = mo ? c.output(2, p.shape) : nullptr;
  if (!vo) return;
  const float* h = hyper.data;
  const float lr = h[0], b1 = h[1], b2 = h[2], eps = h[3], wd = h[4], bc1 = h[5], bc2 = h[6], scale = h[7];
  const float step = lr / bc1, rbc2 = 1.0f / std::sqrt(bc2), decay = lr * wd;
  ParallelFor((n + kChunk - 1) / kChunk, [&](int64_t blk) {
    for (int64_t i = blk * kChunk; i < std::min(n, (blk + 1) * kChunk); i++) {
      const float gi = g.data[i] * scale;
      const float mi = b1 * m.data[i] + (1.0f - b1) * gi;
      const float vi = b2 * v.data[i] + (1.0f - b2) * gi * gi;
      mo[i] = mi;
      vo[i] = vi;
      po[i] = p.data[i] - step * mi / (std::sqrt(vi) * rbc2 + eps) - decay * mask.data[i] * p.data[i];
    }
  });
}

}  // namespace

void AdamWCompute(void* k, TF_OpKernelContext* c) { Update(k, c); }

}  // namespace sinklm
