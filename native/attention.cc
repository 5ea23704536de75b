// Causal self-attention of one layer, all heads, from the fused projection as HF lays it out:
// qkv [B*T, H*3*hd], each head a contiguous [q|k|v] block. Rotary ("rotate half" on the first
// rotary_dims of each head) with the query tables qcos/qsin (which carry 1/sqrt(hd)) and key
// tables kcos/ksin, rows 0..T-1 of [P, hd]. Row i attends to keys j <= i:
//   mode 0 (none/token): p_ij = exp(s_ij) / sum_j exp(s_ij)
//   mode 1 (softmax1):   p_ij = exp(s_ij) / (1 + sum_j exp(s_ij))
//   mode 2 (logit):      p_ij = exp(s_ij) / (exp(b_h) + sum_j exp(s_ij))
// computed as exp(s - m) with m the row max including the sink term. Outputs ctx [B*T, H*hd]
// (heads side by side, ready for the dense projection) and lse [B, H, T], the log of each
// row's denominator, from which the backward recomputes p without storing it (flash
// attention's trade: a second scores product instead of B*H*T*T saved weights).
//
// Work is split over (batch, head) pairs. Within one, queries go in blocks of kQB rows and
// every product (scores, weighted sum, and the four of the backward) is a small matrix
// product on one register-tiled micro-kernel, 6 x kNR outputs held in vector registers
// while the shared dimension streams past. Head and sequence are padded with zeros to the
// tile sizes, so the kernel has no edge cases and padding contributes exact zeros.
#include "common.h"
#include "gemm.h"

namespace sinklm {
namespace {

constexpr int64_t kQB = 24;  // query rows per block: four micro-tiles of kMR = 6 rows

struct AttnShape {
  int64_t B, T, H, hd, rd;
  int64_t Tp, Hp;  // T and hd padded to the tiles
  int64_t row() const { return 3 * H * hd; }
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

struct AttnIn {
  In qkv, qc, qs, kc, ks, sink;
};

bool ReadInputs(Ctx& c, const Attrs& a, AttnIn* in, AttnShape* s) {
  if (!c.input(0, &in->qkv) || !c.input(1, &in->qc) || !c.input(2, &in->qs) || !c.input(3, &in->kc) || !c.input(4, &in->ks) || !c.input(5, &in->sink)) return false;
  s->B = a.batch;
  s->H = a.heads;
  s->rd = a.rotary_dims;
  const In& qkv = in->qkv;
  if (qkv.shape.size() != 2 || s->B < 1 || s->H < 1 || qkv.dim(0) % s->B || qkv.dim(1) % (3 * s->H))
    return c.fail("SinklmAttention: qkv must be [batch*T, heads*3*head_dim]");
  s->T = qkv.dim(0) / s->B;
  s->hd = qkv.dim(1) / (3 * s->H);
  s->Tp = RoundUp(s->T, 48);  // a multiple of kQB and of kNR
  s->Hp = RoundUp(s->hd, kNR);
  if (s->rd < 0 || s->rd > s->hd || s->rd % 2) return c.fail("SinklmAttention: rotary_dims must be even and at most head_dim");
  for (const In* t : {&in->qc, &in->qs, &in->kc, &in->ks})
    if (t->shape.size() != 2 || t->dim(1) != s->hd || t->dim(0) < s->T) return c.fail("SinklmAttention: rotary tables must be [>= T, head_dim]");
  if (a.mode == 2 && in->sink.size != s->H) return c.fail("SinklmAttention: logit mode needs one sink logit per head");
  if (a.mode < 0 || a.mode > 2) return c.fail("SinklmAttention: mode must be 0, 1 or 2");
  return true;
}

// One (batch, head)'s operands, padded: rotated queries q [Tp][Hp], rotated keys as rows
// k [Tp][Hp] and transposed kt [Hp][Tp], values v [Tp][Hp] and transposed vt [Hp][Tp].
struct Head {
  const AttnShape& S;
  std::vector<float> q, k, kt, v, vt;
  explicit Head(const AttnShape& s) : S(s) {}
  void load(const AttnIn& in, int64_t b, int64_t h, bool keyRows, bool valueCols) {
    const int64_t Tp = S.Tp, Hp = S.Hp, hd = S.hd;
    q.assign(Tp * Hp, 0.0f);
    kt.assign(Hp * Tp, 0.0f);
    if (keyRows) k.assign(Tp * Hp, 0.0f);
    if (valueCols) vt.assign(Hp * Tp, 0.0f);
    else v.assign(Tp * Hp, 0.0f);
    std::vector<float> kr(hd);
    for (int64_t i = 0; i < S.T; i++) {
      const float* base = in.qkv.data + (b * S.T + i) * S.row() + h * 3 * hd;
      Rotate(base, in.qc.data + i * hd, in.qs.data + i * hd, hd, S.rd, &q[i * Hp]);
      Rotate(base + hd, in.kc.data + i * hd, in.ks.data + i * hd, hd, S.rd, kr.data());
      for (int64_t d = 0; d < hd; d++) kt[d * Tp + i] = kr[d];
      if (keyRows) std::memcpy(&k[i * Hp], kr.data(), hd * sizeof(float));
      const float* vi = base + 2 * hd;
      if (valueCols)
        for (int64_t d = 0; d < hd; d++) vt[d * Tp + i] = vi[d];
      else
        std::memcpy(&v[i * Hp], vi, hd * sizeof(float));
    }
  }
};

// Turns scores row s[0..n) of row i into weights in place (zero from n to `width`), given the
// sink term's logit (mode != 0); returns the log of the denominator.
inline float SoftmaxRow(float* s, int64_t n, int64_t width, int64_t mode, float sinkLogit) {
  float m = mode ? sinkLogit : s[0];
  for (int64_t j = 0; j < n; j++) m = std::max(m, s[j]);
  float sum = mode ? Exp(sinkLogit - m) : 0.0f;
  for (int64_t j = 0; j < n; j++) {
    s[j] = Exp(s[j] - m);
    sum += s[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j < n; j++) s[j] *= inv;
  for (int64_t j = n; j < width; j++) s[j] = 0.0f;
  return m + std::log(sum);
}

void Forward(void* kernel, TF_OpKernelContext* context) {
  const Attrs& a = *static_cast<Attrs*>(kernel);
  Ctx c(context);
  AttnIn in;
  AttnShape S;
  if (!ReadInputs(c, a, &in, &S)) return;
  float* ctx = c.output(0, {S.B * S.T, S.H * S.hd});
  float* lse = ctx ? c.output(1, {S.B, S.H, S.T}) : nullptr;
  if (!lse) return;
  const int64_t Tp = S.Tp, Hp = S.Hp;
  ParallelFor(S.B * S.H, [&](int64_t u) {
    const int64_t b = u / S.H, h = u % S.H;
    const float sinkLogit = a.mode == 2 ? in.sink.data[h] : 0.0f;
    Head hb(S);
    hb.load(in, b, h, false, false);
    std::vector<float> p(kQB * Tp), o(kQB * Hp);
    for (int64_t i0 = 0; i0 < S.T; i0 += kQB) {
      const int64_t nk = RoundUp(i0 + kQB, kNR);  // keys any row of the block can see, padded
      Gemm(kQB, nk, Hp, &hb.q[i0 * Hp], Hp, hb.kt.data(), Tp, p.data(), Tp, false);
      for (int64_t r = 0; r < kQB; r++) {
        const int64_t i = i0 + r;
        if (i < S.T) lse[u * S.T + i] = SoftmaxRow(&p[r * Tp], i + 1, nk, a.mode, sinkLogit);
        else std::fill(&p[r * Tp], &p[r * Tp] + nk, 0.0f);
      }
      Gemm(kQB, Hp, nk, p.data(), Tp, hb.v.data(), Hp, o.data(), Hp, false);
      for (int64_t r = 0; r < kQB && i0 + r < S.T; r++)
        std::memcpy(ctx + (b * S.T + i0 + r) * S.H * S.hd + h * S.hd, &o[r * Hp], S.hd * sizeof(float));
    }
  });
}

// Inputs: qkv, qcos, qsin, kcos, ksin, sink, ctx, lse, dctx. Outputs: dqkv, dsink.
// Per row i, with p_ij = exp(s_ij - lse_i) and D_i = dctx_i . ctx_i:
//   dv_j += p_ij dctx_i;  ds_ij = p_ij (dctx_i . v_j - D_i);
//   dq_i = sum_j ds_ij k_j;  dk_j += ds_ij q_i  (then through the rotary, transposed);
//   d b_h = -sum_i exp(b_h - lse_i) D_i  (the sink takes weight, gives no value).
// Per query block: P and dP by two products, dS from them, then dQ = dS K, dK += dS^T Q and
// dV += P^T dO, the last two from transposed copies of the block's dS and P.
void Backward(void* kernel, TF_OpKernelContext* context) {
  const Attrs& a = *static_cast<Attrs*>(kernel);
  Ctx c(context);
  AttnIn in;
  AttnShape S;
  if (!ReadInputs(c, a, &in, &S)) return;
  In ctxIn, lse, dctx;
  if (!c.input(6, &ctxIn) || !c.input(7, &lse) || !c.input(8, &dctx)) return;
  if (ctxIn.size != S.B * S.T * S.H * S.hd || dctx.size != ctxIn.size || lse.size != S.B * S.H * S.T)
    return (void)c.fail("SinklmAttentionGrad: ctx, lse or dctx has the wrong size");
  float* dqkv = c.output(0, {S.B * S.T, S.row()});
  float* dsink = dqkv ? c.output(1, in.sink.shape) : nullptr;
  if (!dsink) return;
  const int64_t Tp = S.Tp, Hp = S.Hp, hd = S.hd, crow = S.H * hd;
  std::vector<float> sinkPart(S.B * S.H, 0.0f);
  ParallelFor(S.B * S.H, [&](int64_t u) {
    const int64_t b = u / S.H, h = u % S.H;
    const float sinkLogit = a.mode == 2 ? in.sink.data[h] : 0.0f;
    Head hb(S);
    hb.load(in, b, h, true, true);
    std::vector<float> dO(Tp * Hp, 0.0f), dq(Tp * Hp), dk(Tp * Hp, 0.0f), dv(Tp * Hp, 0.0f);
    std::vector<float> p(kQB * Tp), ds(kQB * Tp), pT(Tp * kQB), dsT(Tp * kQB);
    for (int64_t i = 0; i < S.T; i++) std::memcpy(&dO[i * Hp], dctx.data + (b * S.T + i) * crow + h * hd, hd * sizeof(float));
    double sinkGrad = 0;  // a sum of terms of both signs: kept in double
    for (int64_t i0 = 0; i0 < S.T; i0 += kQB) {
      const int64_t nk = RoundUp(i0 + kQB, kNR);
      Gemm(kQB, nk, Hp, &hb.q[i0 * Hp], Hp, hb.kt.data(), Tp, p.data(), Tp, false);
      Gemm(kQB, nk, Hp, &dO[i0 * Hp], Hp, hb.vt.data(), Tp, ds.data(), Tp, false);
      for (int64_t r = 0; r < kQB; r++) {
        const int64_t i = i0 + r;
        float* pr = &p[r * Tp];
        float* dsr = &ds[r * Tp];
        if (i >= S.T) {
          std::fill(pr, pr + nk, 0.0f);
          std::fill(dsr, dsr + nk, 0.0f);
          continue;
        }
        const float* go = &dO[i * Hp];
        const float* oi = ctxIn.data + (b * S.T + i) * crow + h * hd;
        double Dd = 0;
        for (int64_t d = 0; d < hd; d++) Dd += static_cast<double>(go[d]) * oi[d];
        const float Di = static_cast<float>(Dd);
        const float l = lse.data[u * S.T + i];
        if (a.mode) sinkGrad -= std::exp(static_cast<double>(sinkLogit) - l) * Dd;
        const int64_t n = i + 1;
        for (int64_t j = 0; j < n; j++) {
          pr[j] = Exp(pr[j] - l);
          dsr[j] = pr[j] * (dsr[j] - Di);
        }
        std::fill(pr + n, pr + nk, 0.0f);
        std::fill(dsr + n, dsr + nk, 0.0f);
      }
      Gemm(kQB, Hp, nk, ds.data(), Tp, hb.k.data(), Hp, &dq[i0 * Hp], Hp, false);
      for (int64_t j = 0; j < nk; j++)
        for (int64_t r = 0; r < kQB; r++) {
          pT[j * kQB + r] = p[r * Tp + j];
          dsT[j * kQB + r] = ds[r * Tp + j];
        }
      Gemm(nk, Hp, kQB, dsT.data(), kQB, &hb.q[i0 * Hp], Hp, dk.data(), Hp, true);
      Gemm(nk, Hp, kQB, pT.data(), kQB, &dO[i0 * Hp], Hp, dv.data(), Hp, true);
    }
    sinkPart[u] = static_cast<float>(sinkGrad);
    for (int64_t i = 0; i < S.T; i++) {
      float* out = dqkv + (b * S.T + i) * S.row() + h * 3 * hd;
      Unrotate(&dq[i * Hp], in.qc.data + i * hd, in.qs.data + i * hd, hd, S.rd, out);
      Unrotate(&dk[i * Hp], in.kc.data + i * hd, in.ks.data + i * hd, hd, S.rd, out + hd);
      std::memcpy(out + 2 * hd, &dv[i * Hp], hd * sizeof(float));
    }
  });
  for (int64_t k = 0; k < in.sink.size; k++) dsink[k] = 0;
  if (a.mode == 2)
    for (int64_t h = 0; h < S.H; h++)
      for (int64_t b = 0; b < S.B; b++) dsink[h] += sinkPart[b * S.H + h];
}

}  // namespace

void AttentionCompute(void* k, TF_OpKernelContext* c) { Forward(k, c); }
void AttentionGradCompute(void* k, TF_OpKernelContext* c) { Backward(k, c); }

}  // namespace sinklm
