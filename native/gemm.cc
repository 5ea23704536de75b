// SinklmMatMul: C = op(A) op(B), on the pool. The tfjs kernel (model/kernels/native.ts,
// matMulTakesOwn) sends it only x W^T with at most kDotMaxRows rows, which runs as dot
// products over W's rows in place (ProductRowsDot); every larger product goes to
// TensorFlow's MatMul, which measured 1.3-1.6x faster on the training shapes. The general
// path below stays a correct product for any shape (tested by calling the op directly): the
// weight gradient dy^T x reads A by columns (six contiguous values per k), and a transposed
// B (x W^T with W stored [out, in], as PyTorch stores it) is first copied to [K][N].
//
// Work goes in blocks of 24 rows x 128 columns of C, each over K in slices of 256 so that the
// slice of B a block reads (256 x 128 floats) stays in the core's L2 cache. Every block
// writes only its own part of C, summing over k in the same order whatever thread runs it.
#include "common.h"
#include "gemm.h"

namespace sinklm {
namespace {

constexpr int64_t kRowsPerUnit = 24;
constexpr int64_t kColsPerUnit = 128;
constexpr int64_t kKSlice = 256;
// Up to this many rows, x W^T runs as dot products over W's rows (ProductRowsDot); the same
// bound as DOT_MAX_ROWS in model/kernels/native.ts, which routes those products here.
constexpr int64_t kDotMaxRows = 32;

template <bool TA>
void Product(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc) {
  if (K == 0) {
    for (int64_t i = 0; i < M; i++) std::memset(C + i * ldc, 0, N * sizeof(float));
    return;
  }
  const int64_t rowUnits = (M + kRowsPerUnit - 1) / kRowsPerUnit;
  const int64_t colUnits = (N + kColsPerUnit - 1) / kColsPerUnit;
  ParallelFor(rowUnits * colUnits, [&](int64_t u) {
    const int64_t i0 = (u / colUnits) * kRowsPerUnit, i1 = std::min(M, i0 + kRowsPerUnit);
    const int64_t j0 = (u % colUnits) * kColsPerUnit, j1 = std::min(N, j0 + kColsPerUnit);
    float bpad[kKSlice * kNR];
    for (int64_t k0 = 0; k0 < K; k0 += kKSlice) {
      const int64_t k1 = std::min(K, k0 + kKSlice);
      for (int64_t j = j0; j < j1; j += kNR) Panel<TA>(i0, i1, j, std::min(kNR, j1 - j), k0, k1, A, lda, B, ldb, C, ldc, k0 > 0, bpad);
    }
  });
}

// Rows of A against rows of B, for x W^T with few rows of x: C[i][j] = A[i] . B[j], B
// [N][K] read in place (no copy to [K][N], which for one row cost ten times the product: a
// 2 MB copy of the head's weight per decoded token). Columns are split between the threads;
// four rows of A share each read of B's row, each dot product summed in 8-float lanes over
// k, then the lanes and the tail in one fixed order, so the bits do not depend on the thread.
constexpr int64_t kDotRows = 4;
constexpr int64_t kDotCols = 64;

inline float Lanes(V8 v) {
  float l[8];
  std::memcpy(l, &v, sizeof l);
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

void ProductRowsDot(int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C) {
  const int64_t K8 = K / 8 * 8;
  ParallelFor((N + kDotCols - 1) / kDotCols, [&](int64_t u) {
    const int64_t j0 = u * kDotCols, j1 = std::min(N, j0 + kDotCols);
    for (int64_t i0 = 0; i0 < M; i0 += kDotRows) {
      const int64_t rows = std::min(kDotRows, M - i0);
      for (int64_t j = j0; j < j1; j++) {
        const float* b = B + j * K;
        V8 acc[kDotRows] = {};
        for (int64_t k = 0; k < K8; k += 8) {
          const V8 bv = Load(b + k);
          for (int64_t r = 0; r < rows; r++) acc[r] += Load(A + (i0 + r) * K + k) * bv;
        }
        for (int64_t r = 0; r < rows; r++) {
          float s = Lanes(acc[r]);
          const float* a = A + (i0 + r) * K;
          for (int64_t k = K8; k < K; k++) s += a[k] * b[k];
          C[(i0 + r) * N + j] = s;
        }
      }
    }
  });
}

// dst [cols][rows] = src [rows][cols]^T, in 32 x 32 tiles.
void Transpose(const float* src, int64_t rows, int64_t cols, float* dst) {
  const int64_t tb = 32;
  ParallelFor((rows + tb - 1) / tb, [&](int64_t blk) {
    const int64_t r0 = blk * tb, r1 = std::min(rows, r0 + tb);
    for (int64_t c0 = 0; c0 < cols; c0 += tb)
      for (int64_t r = r0; r < r1; r++)
        for (int64_t c = c0; c < std::min(cols, c0 + tb); c++) dst[c * rows + r] = src[r * cols + c];
  });
}

void MatMul(void* kernel, TF_OpKernelContext* context) {
  const Attrs& at = *static_cast<Attrs*>(kernel);
  Ctx c(context);
  In a, b;
  if (!c.input(0, &a) || !c.input(1, &b)) return;
  if (a.shape.size() != 2 || b.shape.size() != 2) return (void)c.fail("SinklmMatMul: both inputs must be matrices");
  const int64_t M = at.transpose_a ? a.dim(1) : a.dim(0), K = at.transpose_a ? a.dim(0) : a.dim(1);
  const int64_t Kb = at.transpose_b ? b.dim(1) : b.dim(0), N = at.transpose_b ? b.dim(0) : b.dim(1);
  if (K != Kb) return (void)c.fail("SinklmMatMul: inner dimensions differ (" + std::to_string(K) + " and " + std::to_string(Kb) + ")");
  float* out = c.output(0, {M, N});
  if (!out) return;
  // Few rows against a transposed B: dot products over B's rows in place beat copying B.
  if (at.transpose_b && !at.transpose_a && M <= kDotMaxRows) return ProductRowsDot(M, N, K, a.data, b.data, out);
  std::vector<float> bt;
  const float* B = b.data;
  if (at.transpose_b) {
    bt.resize(static_cast<size_t>(K * N));
    Transpose(b.data, N, K, bt.data());
    B = bt.data();
  }
  if (at.transpose_a) Product<true>(M, N, K, a.data, M, B, N, out, N);
  else Product<false>(M, N, K, a.data, K, B, N, out, N);
}

}  // namespace

void MatMulCompute(void* k, TF_OpKernelContext* c) { MatMul(k, c); }

}  // namespace sinklm
