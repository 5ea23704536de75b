// sinklm's own TensorFlow ops: fused kernels for the training step that TensorFlow has no
// eager-callable op for (LayerNorm with its affines, bias + exact GELU, causal attention with
// rotary and the four sink modes), each with its backward op. model/kernels.ts registers
// them as tfjs kernels of the 'tensorflow' backend and runs them through tfjs-node's binding,
// exactly as model/native.ts runs TensorFlow's MatMul.
//
// Why TensorFlow's C kernel API (tensorflow/c/kernels.h + ops.h) and not the C++ custom-op
// API: the C API is the ABI-stable surface (plain C structs and functions exported by
// libtensorflow_framework.so), so this file builds against the C headers the wheel ships and
// keeps working across TensorFlow releases and compilers; the C++ API needs TensorFlow's
// whole header tree (Eigen, absl, protobuf) and must match the exact compiler ABI and flags
// TensorFlow was built with.
//
// It is loaded as an N-API module (see scripts/setup-native.mjs): loading it into the
// process where tfjs-node already runs links it against the very libtensorflow_framework
// already mapped there, and its init function registers the ops into that runtime's global
// op and kernel registries, which TFE_NewOp (tfjs-node's executeOp) consults.
//
// All ops take and return float32. Work is split over (batch, head) pairs or blocks of rows
// on up to TF_NUM_INTRAOP_THREADS threads (default: all cores); results do not depend on
// which thread ran what.

#include <node_api.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tensorflow/c/kernels.h"
#include "tensorflow/c/ops.h"
#include "tensorflow/c/tf_status.h"
#include "tensorflow/c/tf_tensor.h"

#ifndef SINKLM_BUILD
#define SINKLM_BUILD "unknown"
#endif

namespace {

// ---------------------------------------------------------------------------------------------
// Threads and vectorisable math.

int NumThreads() {
  static int n = [] {
    const char* env = std::getenv("TF_NUM_INTRAOP_THREADS");
    int v = env ? std::atoi(env) : 0;
    if (v <= 0) v = static_cast<int>(std::thread::hardware_concurrency());
    return std::max(1, v);
  }();
  return n;
}

// A persistent pool of NumThreads() - 1 helpers. Work is handed out one unit at a time from
// an atomic counter and the caller works too, so a helper the OS has not scheduled (the
// machine may be shared) delays nothing: the caller waits only for units already taken.
// Which thread runs a unit never changes a result: every unit writes its own outputs (and
// its own slot of any partial sum, which the caller then adds in unit order).
class Pool {
 public:
  static Pool& Get() {
    static Pool* pool = new Pool(NumThreads() - 1);  // never destroyed: helpers live with the process
    return *pool;
  }
  template <class F>
  void Run(int64_t n, F f) {
    if (n <= 0) return;
    if (helpers_ == 0 || n == 1) {
      for (int64_t i = 0; i < n; i++) f(i);
      return;
    }
    auto job = std::make_shared<Job>();
    job->n = n;
    job->fn = [&f](int64_t i) { f(i); };
    {
      std::lock_guard<std::mutex> lock(mu_);
      current_ = job;
      gen_++;
    }
    cv_.notify_all();
    Work(*job);
    while (job->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
    std::lock_guard<std::mutex> lock(mu_);
    if (current_ == job) current_.reset();
  }

 private:
  struct Job {
    int64_t n = 0;
    std::function<void(int64_t)> fn;
    std::atomic<int64_t> next{0}, done{0};
  };
  explicit Pool(int helpers) : helpers_(std::max(0, helpers)) {
    for (int k = 0; k < helpers_; k++) std::thread([this] { Loop(); }).detach();
  }
  static void Work(Job& job) {
    for (int64_t i; (i = job.next.fetch_add(1, std::memory_order_relaxed)) < job.n;) {
      job.fn(i);
      job.done.fetch_add(1, std::memory_order_release);
    }
  }
  void Loop() {
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return gen_ != seen; });
        seen = gen_;
        job = current_;
      }
      if (job) Work(*job);
    }
  }
  const int helpers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<Job> current_;
  uint64_t gen_ = 0;
};

// f(unit) for every unit in [0, n), on the pool.
template <class F>
void ParallelFor(int64_t n, F f) {
  Pool::Get().Run(n, f);
}

/** Rows per unit of work for the row-wise kernels. */
constexpr int64_t kRowBlock = 32;
inline int64_t Blocks(int64_t rows) { return (rows + kRowBlock - 1) / kRowBlock; }

// exp for float32 (Cephes' expf: range reduction by ln 2 and a degree-6 polynomial, ~1 ulp),
// written so that loops over it vectorise; clamps instead of over/underflowing.
inline float Exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// erf for float32: the rational approximation TensorFlow's own CPU Erf uses (Eigen's
// generic_fast_erf_float), vectorisable.
inline float Erf(float x) {
  x = x < -4.0f ? -4.0f : x;
  x = x > 4.0f ? 4.0f : x;
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  p = x * p;
  float q = -1.45660718464996e-05f;
  q = q * x2 + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return p / q;
}

// ---------------------------------------------------------------------------------------------
// Kernel plumbing: inputs as (data, shape), outputs allocated by shape.

struct In {
  TF_Tensor* t = nullptr;
  const float* data = nullptr;
  std::vector<int64_t> shape;
  int64_t size = 0;
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
};

struct Ctx {
  TF_OpKernelContext* ctx;
  TF_Status* status = TF_NewStatus();
  std::vector<TF_Tensor*> owned;
  explicit Ctx(TF_OpKernelContext* c) : ctx(c) {}
  ~Ctx() {
    for (auto* t : owned) TF_DeleteTensor(t);
    TF_DeleteStatus(status);
  }
  bool ok() const { return TF_GetCode(status) == TF_OK; }
  bool fail(const std::string& msg) {
    TF_SetStatus(status, TF_INVALID_ARGUMENT, msg.c_str());
    TF_OpKernelContext_Failure(ctx, status);
    return false;
  }
  bool input(int i, In* in) {
    TF_GetInput(ctx, i, &in->t, status);
    if (!ok()) {
      TF_OpKernelContext_Failure(ctx, status);
      return false;
    }
    owned.push_back(in->t);
    if (TF_TensorType(in->t) != TF_FLOAT) return fail("sinklm ops take float32 tensors");
    in->shape.resize(TF_NumDims(in->t));
    for (size_t d = 0; d < in->shape.size(); d++) in->shape[d] = TF_Dim(in->t, static_cast<int>(d));
    in->size = TF_TensorElementCount(in->t);
    in->data = static_cast<const float*>(TF_TensorData(in->t));
    return true;
  }
  float* output(int i, std::vector<int64_t> dims) {
    int64_t n = 1;
    for (auto d : dims) n *= d;
    TF_Tensor* t = TF_AllocateOutput(ctx, i, TF_FLOAT, dims.data(), static_cast<int>(dims.size()), n * sizeof(float), status);
    if (!ok()) {
      TF_OpKernelContext_Failure(ctx, status);
      return nullptr;
    }
    owned.push_back(t);
    return static_cast<float*>(TF_TensorData(t));
  }
};

// Attributes read at kernel construction.
struct Attrs {
  int64_t batch = 1, heads = 1, rotary_dims = 0, mode = 0;
  float eps = 1e-5f;
};

void* CreateKernel(TF_OpKernelConstruction* c) {
  auto* a = new Attrs();
  TF_Status* s = TF_NewStatus();
  auto geti = [&](const char* name, int64_t* v) {
    if (TF_OpKernelConstruction_HasAttr(c, name, s)) TF_OpKernelConstruction_GetAttrInt64(c, name, v, s);
  };
  geti("batch", &a->batch);
  geti("heads", &a->heads);
  geti("rotary_dims", &a->rotary_dims);
  geti("mode", &a->mode);
  if (TF_OpKernelConstruction_HasAttr(c, "eps", s)) TF_OpKernelConstruction_GetAttrFloat(c, "eps", &a->eps, s);
  if (TF_GetCode(s) != TF_OK) TF_OpKernelConstruction_Failure(c, s);
  TF_DeleteStatus(s);
  return a;
}

void DeleteKernel(void* a) { delete static_cast<Attrs*>(a); }

// ---------------------------------------------------------------------------------------------
// LayerNorm: x [N, D] -> xhat = (x - mean) * rstd, rstd = 1/sqrt(var + eps), and K affines
// y_k = xhat * gamma_k + beta_k (K = 1, or 2 for the parallel residual's two LayerNorms of
// the same x). Backward, with g = sum_k dy_k * gamma_k:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
//   dgamma_k = sum over rows of dy_k * xhat, dbeta_k = sum over rows of dy_k.

template <int K>
void LayerNormCompute(void* kernel, TF_OpKernelContext* context) {
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
void LayerNormGradCompute(void*, TF_OpKernelContext* context) {
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

void BiasGeluCompute(void*, TF_OpKernelContext* context) {
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

void BiasGeluGradCompute(void*, TF_OpKernelContext* context) {
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

// ---------------------------------------------------------------------------------------------
// Causal self-attention of one layer, all heads, from the fused projection as HF lays it out:
// qkv [B*T, H*3*hd], each head a contiguous [q|k|v] block. Rotary ("rotate half" on the first
// rotary_dims of each head) with the query tables qcos/qsin (which carry 1/sqrt(hd)) and key
// tables kcos/ksin, rows 0..T-1 of [P, hd]. Row i attends to keys j <= i:
//   mode 0 (none/token): p_ij = exp(s_ij) / sum_j exp(s_ij)
//   mode 1 (softmax1):   p_ij = exp(s_ij) / (1 + sum_j exp(s_ij))
//   mode 2 (logit):      p_ij = exp(s_ij) / (exp(b_h) + sum_j exp(s_ij))
// computed as exp(s - m) with m the row max including the sink term. Outputs ctx [B*T, H*hd]
// (heads side by side, ready for the dense projection) and lse [B, H, T], the log of each
// row's denominator, from which the backward recomputes p without storing it.

struct AttnShape {
  int64_t B, T, H, hd, rd;
};

// Rotates row `src` (hd values) into `dst` with tables rows cs, sn; half = rd / 2.
inline void Rotate(const float* src, const float* cs, const float* sn, int64_t hd, int64_t rd, float* dst) {
  const int64_t half = rd / 2;
  for (int64_t d = 0; d < half; d++) dst[d] = src[d] * cs[d] - src[d + half] * sn[d];
  for (int64_t d = half; d < rd; d++) dst[d] = src[d] * cs[d] + src[d - half] * sn[d];
  for (int64_t d = rd; d < hd; d++) dst[d] = src[d] * cs[d];
}

// The transpose of Rotate: the gradient of its input from the gradient of its output.
inline void Unrotate(const float* g, const float* cs, const float* sn, int64_t hd, int64_t rd, float* dst) {
  const int64_t half = rd / 2;
  for (int64_t d = 0; d < half; d++) dst[d] = g[d] * cs[d] + g[d + half] * sn[d + half];
  for (int64_t d = half; d < rd; d++) dst[d] = g[d] * cs[d] - g[d - half] * sn[d - half];
  for (int64_t d = rd; d < hd; d++) dst[d] = g[d] * cs[d];
}

bool AttnInputs(Ctx& c, const Attrs& a, In* qkv, In* qc, In* qs, In* kc, In* ks, In* sink, AttnShape* s) {
  if (!c.input(0, qkv) || !c.input(1, qc) || !c.input(2, qs) || !c.input(3, kc) || !c.input(4, ks) || !c.input(5, sink)) return false;
  s->B = a.batch;
  s->H = a.heads;
  s->rd = a.rotary_dims;
  if (qkv->shape.size() != 2 || s->B < 1 || s->H < 1 || qkv->dim(0) % s->B || qkv->dim(1) % (3 * s->H))
    return c.fail("SinklmAttention: qkv must be [batch*T, heads*3*head_dim]");
  s->T = qkv->dim(0) / s->B;
  s->hd = qkv->dim(1) / (3 * s->H);
  if (s->rd < 0 || s->rd > s->hd || s->rd % 2) return c.fail("SinklmAttention: rotary_dims must be even and at most head_dim");
  for (const In* t : {qc, qs, kc, ks})
    if (t->shape.size() != 2 || t->dim(1) != s->hd || t->dim(0) < s->T) return c.fail("SinklmAttention: rotary tables must be [>= T, head_dim]");
  if (a.mode == 2 && sink->size != s->H) return c.fail("SinklmAttention: logit mode needs one sink logit per head");
  if (a.mode < 0 || a.mode > 2) return c.fail("SinklmAttention: mode must be 0, 1 or 2");
  return true;
}

// Per (b, h): rotated queries qr [T, hd], keys as rows kr [T, hd] and transposed kt [hd, T].
struct HeadBuffers {
  std::vector<float> qr, kr, kt, s, p;
  HeadBuffers(const AttnShape& S) : qr(S.T * S.hd), kr(S.T * S.hd), kt(S.hd * S.T), s(S.T), p(S.T) {}
  void load(const AttnShape& S, const In& qkv, const In& qc, const In& qs, const In& kc, const In& ks, int64_t b, int64_t h) {
    const int64_t row = 3 * S.H * S.hd;
    for (int64_t i = 0; i < S.T; i++) {
      const float* base = qkv.data + (b * S.T + i) * row + h * 3 * S.hd;
      Rotate(base, qc.data + i * S.hd, qs.data + i * S.hd, S.hd, S.rd, &qr[i * S.hd]);
      Rotate(base + S.hd, kc.data + i * S.hd, ks.data + i * S.hd, S.hd, S.rd, &kr[i * S.hd]);
      for (int64_t d = 0; d < S.hd; d++) kt[d * S.T + i] = kr[i * S.hd + d];
    }
  }
  // s[0..i] = qr_i . kr_j
  void scores(const AttnShape& S, int64_t i) {
    const int64_t n = i + 1;
    float* sp = s.data();
    for (int64_t j = 0; j < n; j++) sp[j] = 0;
    for (int64_t d = 0; d < S.hd; d++) {
      const float q = qr[i * S.hd + d];
      const float* kd = &kt[d * S.T];
      for (int64_t j = 0; j < n; j++) sp[j] += q * kd[j];
    }
  }
};

void AttentionCompute(void* kernel, TF_OpKernelContext* context) {
  const Attrs& a = *static_cast<Attrs*>(kernel);
  Ctx c(context);
  In qkv, qc, qs, kc, ks, sink;
  AttnShape S;
  if (!AttnInputs(c, a, &qkv, &qc, &qs, &kc, &ks, &sink, &S)) return;
  float* ctx = c.output(0, {S.B * S.T, S.H * S.hd});
  float* lse = ctx ? c.output(1, {S.B, S.H, S.T}) : nullptr;
  if (!lse) return;
  const int64_t row = 3 * S.H * S.hd;
  ParallelFor(S.B * S.H, [&](int64_t u) {
    HeadBuffers hb(S);
    std::vector<float> o(S.hd);
    {
      const int64_t b = u / S.H, h = u % S.H;
      hb.load(S, qkv, qc, qs, kc, ks, b, h);
      const float sinkLogit = a.mode == 2 ? sink.data[h] : 0.0f;
      const float* v = qkv.data + b * S.T * row + h * 3 * S.hd + 2 * S.hd;
      for (int64_t i = 0; i < S.T; i++) {
        const int64_t n = i + 1;
        hb.scores(S, i);
        float m = a.mode ? sinkLogit : hb.s[0];
        for (int64_t j = 0; j < n; j++) m = std::max(m, hb.s[j]);
        float* p = hb.p.data();
        const float* sp = hb.s.data();
        for (int64_t j = 0; j < n; j++) p[j] = Exp(sp[j] - m);
        float sum = a.mode ? Exp(sinkLogit - m) : 0.0f;
        for (int64_t j = 0; j < n; j++) sum += p[j];
        const float inv = 1.0f / sum;
        for (int64_t d = 0; d < S.hd; d++) o[d] = 0;
        for (int64_t j = 0; j < n; j++) {
          const float pj = p[j] * inv;
          const float* vj = v + j * row;
          for (int64_t d = 0; d < S.hd; d++) o[d] += pj * vj[d];
        }
        std::memcpy(ctx + (b * S.T + i) * S.H * S.hd + h * S.hd, o.data(), S.hd * sizeof(float));
        lse[u * S.T + i] = m + std::log(sum);
      }
    }
  });
}

// Inputs: qkv, qcos, qsin, kcos, ksin, sink, ctx, lse, dctx. Outputs: dqkv, dsink.
// Per row i, with p_ij = exp(s_ij - lse_i) and D_i = dctx_i . ctx_i:
//   dv_j += p_ij dctx_i;  ds_ij = p_ij (dctx_i . v_j - D_i);
//   dq_i = sum_j ds_ij k_j;  dk_j += ds_ij q_i  (then through the rotary, transposed);
//   d b_h = -sum_i exp(b_h - lse_i) D_i  (the sink takes weight, gives no value).
void AttentionGradCompute(void* kernel, TF_OpKernelContext* context) {
  const Attrs& a = *static_cast<Attrs*>(kernel);
  Ctx c(context);
  In qkv, qc, qs, kc, ks, sink, ctxIn, lse, dctx;
  AttnShape S;
  if (!AttnInputs(c, a, &qkv, &qc, &qs, &kc, &ks, &sink, &S)) return;
  if (!c.input(6, &ctxIn) || !c.input(7, &lse) || !c.input(8, &dctx)) return;
  if (ctxIn.size != S.B * S.T * S.H * S.hd || dctx.size != ctxIn.size || lse.size != S.B * S.H * S.T)
    return (void)c.fail("SinklmAttentionGrad: ctx, lse or dctx has the wrong size");
  float* dqkv = c.output(0, {S.B * S.T, 3 * S.H * S.hd});
  float* dsink = dqkv ? c.output(1, sink.shape) : nullptr;
  if (!dsink) return;
  const int64_t row = 3 * S.H * S.hd;
  const int64_t crow = S.H * S.hd;
  std::vector<float> sinkPart(S.B * S.H, 0.0f);
  ParallelFor(S.B * S.H, [&](int64_t u) {
    HeadBuffers hb(S);
    std::vector<float> vt(S.hd * S.T), dq(S.T * S.hd), dk(S.T * S.hd), dv(S.T * S.hd), dp(S.T);
    {
      const int64_t b = u / S.H, h = u % S.H;
      hb.load(S, qkv, qc, qs, kc, ks, b, h);
      const float sinkLogit = a.mode == 2 ? sink.data[h] : 0.0f;
      const float* v = qkv.data + b * S.T * row + h * 3 * S.hd + 2 * S.hd;
      for (int64_t j = 0; j < S.T; j++)
        for (int64_t d = 0; d < S.hd; d++) vt[d * S.T + j] = v[j * row + d];
      std::fill(dk.begin(), dk.end(), 0.0f);
      std::fill(dv.begin(), dv.end(), 0.0f);
      double sinkGrad = 0;  // a sum of terms of both signs: kept in double
      for (int64_t i = 0; i < S.T; i++) {
        const int64_t n = i + 1;
        const float* go = dctx.data + (b * S.T + i) * crow + h * S.hd;
        const float* oi = ctxIn.data + (b * S.T + i) * crow + h * S.hd;
        const float l = lse.data[u * S.T + i];
        double Dd = 0;
        for (int64_t d = 0; d < S.hd; d++) Dd += static_cast<double>(go[d]) * oi[d];
        const float Di = static_cast<float>(Dd);
        if (a.mode) sinkGrad -= std::exp(static_cast<double>(sinkLogit) - l) * Dd;
        hb.scores(S, i);
        float* p = hb.p.data();
        const float* sp = hb.s.data();
        for (int64_t j = 0; j < n; j++) p[j] = Exp(sp[j] - l);
        float* dpp = dp.data();
        for (int64_t j = 0; j < n; j++) dpp[j] = 0;
        for (int64_t d = 0; d < S.hd; d++) {
          const float g = go[d];
          const float* vd = &vt[d * S.T];
          for (int64_t j = 0; j < n; j++) dpp[j] += g * vd[j];
        }
        for (int64_t j = 0; j < n; j++) dpp[j] = p[j] * (dpp[j] - Di);  // ds_ij
        float* dqi = &dq[i * S.hd];
        const float* qi = &hb.qr[i * S.hd];
        for (int64_t d = 0; d < S.hd; d++) dqi[d] = 0;
        for (int64_t j = 0; j < n; j++) {
          const float ds = dpp[j];
          const float pj = p[j];
          const float* kj = &hb.kr[j * S.hd];
          float* dkj = &dk[j * S.hd];
          float* dvj = &dv[j * S.hd];
          for (int64_t d = 0; d < S.hd; d++) {
            dqi[d] += ds * kj[d];
            dkj[d] += ds * qi[d];
            dvj[d] += pj * go[d];
          }
        }
      }
      sinkPart[u] = static_cast<float>(sinkGrad);
      for (int64_t i = 0; i < S.T; i++) {
        float* out = dqkv + (b * S.T + i) * row + h * 3 * S.hd;
        Unrotate(&dq[i * S.hd], qc.data + i * S.hd, qs.data + i * S.hd, S.hd, S.rd, out);
        Unrotate(&dk[i * S.hd], kc.data + i * S.hd, ks.data + i * S.hd, S.hd, S.rd, out + S.hd);
        std::memcpy(out + 2 * S.hd, &dv[i * S.hd], S.hd * sizeof(float));
      }
    }
  });
  for (int64_t k = 0; k < sink.size; k++) dsink[k] = 0;
  if (a.mode == 2)
    for (int64_t h = 0; h < S.H; h++)
      for (int64_t b = 0; b < S.B; b++) dsink[h] += sinkPart[b * S.H + h];
}

// ---------------------------------------------------------------------------------------------
// Registration.

struct OpSpec {
  const char* name;
  std::vector<const char*> inputs, outputs, attrs;
  void (*compute)(void*, TF_OpKernelContext*);
};

const char* kAttnAttrs[] = {"batch: int", "heads: int", "rotary_dims: int", "mode: int = 0"};

std::vector<OpSpec> Specs() {
  std::vector<const char*> attn(std::begin(kAttnAttrs), std::end(kAttnAttrs));
  return {
      {"SinklmLayerNorm", {"x: float", "gamma: float", "beta: float"}, {"y: float", "xhat: float", "rstd: float"}, {"eps: float = 1e-5"}, LayerNormCompute<1>},
      {"SinklmLayerNorm2",
       {"x: float", "gamma1: float", "beta1: float", "gamma2: float", "beta2: float"},
       {"y1: float", "y2: float", "xhat: float", "rstd: float"},
       {"eps: float = 1e-5"},
       LayerNormCompute<2>},
      {"SinklmLayerNormGrad", {"xhat: float", "rstd: float", "gamma: float", "dy: float"}, {"dx: float", "dgamma: float", "dbeta: float"}, {}, LayerNormGradCompute<1>},
      {"SinklmLayerNorm2Grad",
       {"xhat: float", "rstd: float", "gamma1: float", "dy1: float", "gamma2: float", "dy2: float"},
       {"dx: float", "dgamma1: float", "dbeta1: float", "dgamma2: float", "dbeta2: float"},
       {},
       LayerNormGradCompute<2>},
      {"SinklmBiasGelu", {"x: float", "bias: float"}, {"y: float"}, {}, BiasGeluCompute},
      {"SinklmBiasGeluGrad", {"dy: float", "x: float", "bias: float"}, {"dx: float", "dbias: float"}, {}, BiasGeluGradCompute},
      {"SinklmAttention",
       {"qkv: float", "qcos: float", "qsin: float", "kcos: float", "ksin: float", "sink: float"},
       {"ctx: float", "lse: float"},
       attn,
       AttentionCompute},
      {"SinklmAttentionGrad",
       {"qkv: float", "qcos: float", "qsin: float", "kcos: float", "ksin: float", "sink: float", "ctx: float", "lse: float", "dctx: float"},
       {"dqkv: float", "dsink: float"},
       attn,
       AttentionGradCompute},
  };
}

// Registers every op once per process (worker threads load the module again).
std::string RegisterAll(std::vector<std::string>* names) {
  static std::string error;
  static std::vector<std::string> registered;
  static bool done = false;
  if (!done) {
    done = true;
    TF_Status* s = TF_NewStatus();
    for (const OpSpec& op : Specs()) {
      TF_OpDefinitionBuilder* b = TF_NewOpDefinitionBuilder(op.name);
      for (auto* i : op.inputs) TF_OpDefinitionBuilderAddInput(b, i);
      for (auto* o : op.outputs) TF_OpDefinitionBuilderAddOutput(b, o);
      for (auto* at : op.attrs) TF_OpDefinitionBuilderAddAttr(b, at);
      TF_RegisterOpDefinition(b, s);
      if (TF_GetCode(s) == TF_OK) {
        TF_KernelBuilder* kb = TF_NewKernelBuilder(op.name, "CPU", CreateKernel, op.compute, DeleteKernel);
        TF_RegisterKernelBuilder(op.name, kb, s);
      }
      if (TF_GetCode(s) != TF_OK) {
        error = std::string(op.name) + ": " + TF_Message(s);
        break;
      }
      registered.push_back(op.name);
    }
    TF_DeleteStatus(s);
  }
  *names = registered;
  return error;
}

napi_value Init(napi_env env, napi_value exports) {
  std::vector<std::string> names;
  const std::string error = RegisterAll(&names);
  napi_value arr, str;
  napi_create_array_with_length(env, names.size(), &arr);
  for (size_t i = 0; i < names.size(); i++) {
    napi_create_string_utf8(env, names[i].c_str(), NAPI_AUTO_LENGTH, &str);
    napi_set_element(env, arr, static_cast<uint32_t>(i), str);
  }
  napi_set_named_property(env, exports, "ops", arr);
  napi_create_string_utf8(env, SINKLM_BUILD, NAPI_AUTO_LENGTH, &str);
  napi_set_named_property(env, exports, "build", str);
  napi_value threads;
  napi_create_int32(env, NumThreads(), &threads);
  napi_set_named_property(env, exports, "threads", threads);
  if (!error.empty()) {
    napi_create_string_utf8(env, error.c_str(), NAPI_AUTO_LENGTH, &str);
    napi_set_named_property(env, exports, "error", str);
  }
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
