// Next-token cross entropy over the vocabulary, split so the [N, V] logits are read once
// forward and once backward and written once: the forward keeps only each row's log-sum-exp,
// the backward writes the gradient already scaled by the row's upstream gradient. (TensorFlow's
// SparseSoftmaxCrossEntropyWithLogits writes softmax - onehot in the forward, which the chain
// rule then reads and scales in a second pass.)
//   nll_i = lse_i - l_i[y_i],  lse_i = log sum_v exp(l_iv)
//   dl_iv = dnll_i * (exp(l_iv - lse_i) - [v == y_i])
#include "common.h"

namespace sinklm {
namespace {

constexpr int64_t kXentRows = 8;

bool ReadXent(Ctx& c, In* logits, In* labels, int64_t* N, int64_t* V) {
  if (!c.input(0, logits) || !c.input(1, labels, TF_INT32)) return false;
  if (logits->shape.size() != 2) return c.fail("SinklmXent: logits must be [N, V]");
  *N = logits->dim(0);
  *V = logits->dim(1);
  if (labels->size != *N) return c.fail("SinklmXent: labels must have one entry per row of logits");
  const int32_t* y = labels->ints();
  for (int64_t i = 0; i < *N; i++)
    if (y[i] < 0 || y[i] >= *V) return c.fail("SinklmXent: label " + std::to_string(y[i]) + " is outside [0, " + std::to_string(*V) + ")");
  return true;
}

void Forward(void*, TF_OpKernelContext* context) {
  Ctx c(context);
  In logits, labels;
  int64_t N, V;
  if (!ReadXent(c, &logits, &labels, &N, &V)) return;
  float* nll = c.output(0, {N});
  float* lse = nll ? c.output(1, {N}) : nullptr;
  if (!lse) return;
  const int32_t* y = labels.ints();
  ParallelFor((N + kXentRows - 1) / kXentRows, [&](int64_t blk) {
    for (int64_t i = blk * kXentRows; i < std::min(N, (blk + 1) * kXentRows); i++) {
      const float* l = logits.data + i * V;
      float m = l[0];
      for (int64_t v = 0; v < V; v++) m = std::max(m, l[v]);
      float sum = 0;
      for (int64_t v = 0; v < V; v++) sum += Exp(l[v] - m);
      lse[i] = m + std::log(sum);
      nll[i] = lse[i] - l[y[i]];
    }
  });
}

// Inputs: logits, labels, lse, dnll. Output: dlogits.
void Backward(void*, TF_OpKernelContext* context) {
  Ctx c(context);
  In logits, labels, lse, dnll;
  int64_t N, V;
  if (!ReadXent(c, &logits, &labels, &N, &V)) return;
  if (!c.input(2, &lse) || !c.input(3, &dnll)) return;
  if (lse.size != N || dnll.size != N) return (void)c.fail("SinklmXentGrad: lse and dnll must have one entry per row");
  float* dl = c.output(0, {N, V});
  if (!dl) return;
  const int32_t* y = labels.ints();
  ParallelFor((N + kXentRows - 1) / kXentRows, [&](int64_t blk) {
    for (int64_t i = blk * kXentRows; i < std::min(N, (blk + 1) * kXentRows); i++) {
      const float* l = logits.data + i * V;
      float* g = dl + i * V;
      const float li = lse.data[i], gi = dnll.data[i];
      for (int64_t v = 0; v < V; v++) g[v] = gi * Exp(l[v] - li);
      g[y[i]] -= gi;
    }
  });
}

}  // namespace

void XentCompute(void* k, TF_OpKernelContext* c) { Forward(k, c); }
void XentGradCompute(void* k, TF_OpKernelContext* c) { Backward(k, c); }

}  // namespace sinklm
