// What every sinklm op shares: the thread pool, vectorisable exp and erf, tensor plumbing
// over TensorFlow's C kernel API, and the kernel attributes. One copy per process (the pool
// lives in an inline function's static, so every file sees the same pool).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tensorflow/c/kernels.h"
#include "tensorflow/c/tf_status.h"
#include "tensorflow/c/tf_tensor.h"

namespace sinklm {

// ---------------------------------------------------------------------------------------------
// Threads and vectorisable math.

// Threads of sinklm's ops: SINKLM_OPS_THREADS, else TF_NUM_INTRAOP_THREADS (one setting
// limits both, as the background training runs use it), else every core. Apart, they let
// TensorFlow's own (now small) kernels run on one thread while sinklm's use both cores:
// TF_NUM_INTRAOP_THREADS=1 SINKLM_OPS_THREADS=2 measured median 6,138 against 5,726
// tokens/s for the default (five alternating pairs of `sinklm bench train`, 2026-12-01).
inline int NumThreads() {
  static int n = [] {
    const char* env = std::getenv("SINKLM_OPS_THREADS");
    if (!env) env = std::getenv("TF_NUM_INTRAOP_THREADS");
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
inline void ParallelFor(int64_t n, F f) {
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
  const int32_t* ints() const { return static_cast<const int32_t*>(TF_TensorData(t)); }
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
  // Input i, which must be float32 (or `type`); int32 inputs are read through `ints()`.
  bool input(int i, In* in, TF_DataType type = TF_FLOAT) {
    TF_GetInput(ctx, i, &in->t, status);
    if (!ok()) {
      TF_OpKernelContext_Failure(ctx, status);
      return false;
    }
    owned.push_back(in->t);
    if (TF_TensorType(in->t) != type) return fail(type == TF_FLOAT ? "sinklm ops take float32 tensors" : "sinklm: an index input must be int32");
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


// Attributes read at kernel construction (ops.cc).
struct Attrs {
  int64_t batch = 1, heads = 1, rotary_dims = 0, mode = 0;
  float eps = 1e-5f;
  bool transpose_a = false, transpose_b = false;
};

// The compute functions, one per op (norm.cc, attention.cc, xent.cc, gemm.cc, adamw.cc).
using Compute = void (*)(void*, TF_OpKernelContext*);
void LayerNormCompute(void*, TF_OpKernelContext*);
void LayerNorm2Compute(void*, TF_OpKernelContext*);
void LayerNormGradCompute(void*, TF_OpKernelContext*);
void LayerNorm2GradCompute(void*, TF_OpKernelContext*);
void BiasGeluCompute(void*, TF_OpKernelContext*);
void BiasGeluGradCompute(void*, TF_OpKernelContext*);
void AttentionCompute(void*, TF_OpKernelContext*);
void AttentionGradCompute(void*, TF_OpKernelContext*);
void XentCompute(void*, TF_OpKernelContext*);
void XentGradCompute(void*, TF_OpKernelContext*);
void MatMulCompute(void*, TF_OpKernelContext*);
void AdamWCompute(void*, TF_OpKernelContext*);

}  // namespace sinklm
