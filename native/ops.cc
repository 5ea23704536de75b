// sinklm's own TensorFlow ops: fused kernels for the training step that TensorFlow has no
// eager-callable op for (LayerNorm with its affines, bias + exact GELU, causal attention with
// rotary and the four sink modes, the next-token cross entropy), each with its backward op. model/kernels.ts registers
// them as tfjs kernels of the 'tensorflow' backend and runs them through tfjs-node's binding,
// exactly as model/native.ts runs TensorFlow's MatMul.
//
// Why TensorFlow's C kernel API (tensorflow/c/kernels.h + ops.h) and not the C++ custom-op
// API: the C API is the ABI-stable surface (plain C structs and functions exported by
// libtensorflow_framework.so), so these files build against the C headers the wheel ships and
// keeps working across TensorFlow releases and compilers; the C++ API needs TensorFlow's
// whole header tree (Eigen, absl, protobuf) and must match the exact compiler ABI and flags
// TensorFlow was built with.
//
// It is loaded as an N-API module (built by scripts/native-ops.mjs): loading it into the
// process where tfjs-node already runs links it against the very libtensorflow_framework
// already mapped there, and its init function registers the ops into that runtime's global
// op and kernel registries, which TFE_NewOp (tfjs-node's executeOp) consults.
//
// All ops take and return float32 (labels are int32). Work is split over (batch, head) pairs or blocks of rows
// on up to TF_NUM_INTRAOP_THREADS threads (default: all cores); results do not depend on
// which thread ran what.
//
// The kernels live by subject: norm.cc (LayerNorm, bias + GELU), attention.cc, xent.cc (the
// loss), gemm.cc (the linear layers' products, on gemm.h's micro-kernel, which attention.cc
// shares), adamw.cc (the optimizer's update); common.h has what they all share. This file defines the ops and registers them.

#include <node_api.h>

#include <climits>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "common.h"
#include "tensorflow/c/ops.h"

#ifndef SINKLM_BUILD
#define SINKLM_BUILD "unknown"
#endif

namespace sinklm {
namespace {

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
  auto getb = [&](const char* name, bool* v) {
    TF_Bool b = 0;
    if (TF_OpKernelConstruction_HasAttr(c, name, s)) TF_OpKernelConstruction_GetAttrBool(c, name, &b, s);
    *v = b != 0;
  };
  getb("transpose_a", &a->transpose_a);
  getb("transpose_b", &a->transpose_b);
  if (TF_GetCode(s) != TF_OK) TF_OpKernelConstruction_Failure(c, s);
  TF_DeleteStatus(s);
  return a;
}

void DeleteKernel(void* a) { delete static_cast<Attrs*>(a); }

struct OpSpec {
  const char* name;
  std::vector<const char*> inputs, outputs, attrs;
  Compute compute;
};

const char* kAttnAttrs[] = {"batch: int", "heads: int", "rotary_dims: int", "mode: int = 0"};

std::vector<OpSpec> Specs() {
  std::vector<const char*> attn(std::begin(kAttnAttrs), std::end(kAttnAttrs));
  return {
      {"SinklmLayerNorm", {"x: float", "gamma: float", "beta: float"}, {"y: float", "xhat: float", "rstd: float"}, {"eps: float = 1e-5"}, LayerNormCompute},
      {"SinklmLayerNorm2",
       {"x: float", "gamma1: float", "beta1: float", "gamma2: float", "beta2: float"},
       {"y1: float", "y2: float", "xhat: float", "rstd: float"},
       {"eps: float = 1e-5"},
       LayerNorm2Compute},
      {"SinklmLayerNormGrad", {"xhat: float", "rstd: float", "gamma: float", "dy: float"}, {"dx: float", "dgamma: float", "dbeta: float"}, {}, LayerNormGradCompute},
      {"SinklmLayerNorm2Grad",
       {"xhat: float", "rstd: float", "gamma1: float", "dy1: float", "gamma2: float", "dy2: float"},
       {"dx: float", "dgamma1: float", "dbeta1: float", "dgamma2: float", "dbeta2: float"},
       {},
       LayerNorm2GradCompute},
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
      {"SinklmXent", {"logits: float", "labels: int32"}, {"nll: float", "lse: float"}, {}, XentCompute},
      {"SinklmMatMul", {"a: float", "b: float"}, {"product: float"}, {"transpose_a: bool = false", "transpose_b: bool = false"}, MatMulCompute},
      {"SinklmAdamW",
       {"p: float", "g: float", "m: float", "v: float", "mask: float", "hyper: float"},
       {"p_out: float", "m_out: float", "v_out: float"},
       {},
       AdamWCompute},
      {"SinklmXentGrad", {"logits: float", "labels: int32", "lse: float", "dnll: float"}, {"dlogits: float"}, {}, XentGradCompute},
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

}  // namespace

// Makes freed memory stay with the process for reuse: no allocation is served by a fresh
// mmap, and the heap is never trimmed. A training step allocates and frees the same few
// hundred MB of tensors every step; with glibc's defaults the largest (the [tokens, vocab]
// logits and their gradient) come from fresh mmaps whose every page faults on first write
// (measured here: 75k faults and ~0.36 s of system time per step of the default bench; none
// with this). Training processes ask for it; the rest keep the defaults. Returns whether it
// took effect (glibc only).
napi_value RetainFreedMemory(napi_env env, napi_callback_info) {
  bool ok = false;
#if defined(__GLIBC__)
  ok = mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1;
#endif
  napi_value result;
  napi_get_boolean(env, ok, &result);
  return result;
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
  napi_value fn;
  napi_create_function(env, "retainFreedMemory", NAPI_AUTO_LENGTH, RetainFreedMemory, nullptr, &fn);
  napi_set_named_property(env, exports, "retainFreedMemory", fn);
  napi_value threads;
  napi_create_int32(env, NumThreads(), &threads);
  napi_set_named_property(env, exports, "threads", threads);
  if (!error.empty()) {
    napi_create_string_utf8(env, error.c_str(), NAPI_AUTO_LENGTH, &str);
    napi_set_named_property(env, exports, "error", str);
  }
  return exports;
}

}  // namespace sinklm

NAPI_MODULE(NODE_GYP_MODULE_NAME, sinklm::Init)
