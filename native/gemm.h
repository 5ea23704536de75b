// Single-precision matrix products on one register-tiled micro-kernel, for the attention
// kernels (small products per head, on the calling thread) and the SinklmMatMul op (on the
// pool).
//
// The micro-kernel computes a 6 x 16 block of C as a sum over k of outer products: one row
// of B (16 floats, two 8-float vectors) times six values of A broadcast. Its 12 accumulators
// stay in registers for the whole K loop, enough independent FMA chains to cover the FMA
// latency (measured here on one core: ~80 GFLOP/s at 6 x 16, ~45 at 4 x 16). A is read either
// as rows (A [M][K]) or as columns (A [K][M], op(A) = A^T: the weight gradient dy^T x, whose
// six values per k are then contiguous); B is always [K][N] row-major.
#pragma once

#include <cstdint>
#include <cstring>

namespace sinklm {

// A vector of 8 floats (one AVX register; two SSE registers where AVX is absent).
typedef float V8 __attribute__((vector_size(32)));
inline V8 Load(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void Store(float* p, V8 v) { std::memcpy(p, &v, sizeof v); }

constexpr int64_t kMR = 6;   // micro-tile rows
constexpr int64_t kNR = 16;  // micro-tile columns: two V8

inline int64_t RoundUp(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// C[MR][kNR] (row stride ldc) = (accumulate ? C : 0) + sum_k op(A)[r][k] B[k][c]. With TA,
// A points at op(A)[0][0] = A[0][0] of the [K][M] array (stride lda between k).
template <int MR, bool TA>
inline void Micro(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, float* C, int64_t ldc, bool accumulate) {
  V8 c[MR][2];
  for (int r = 0; r < MR; r++) {
    c[r][0] = accumulate ? Load(C + r * ldc) : V8{};
    c[r][1] = accumulate ? Load(C + r * ldc + 8) : V8{};
  }
  for (int64_t k = 0; k < K; k++) {
    const V8 b0 = Load(B + k * ldb), b1 = Load(B + k * ldb + 8);
    for (int r = 0; r < MR; r++) {
      const float a = TA ? A[k * lda + r] : A[r * lda + k];
      c[r][0] += a * b0;
      c[r][1] += a * b1;
    }
  }
  for (int r = 0; r < MR; r++) {
    Store(C + r * ldc, c[r][0]);
    Store(C + r * ldc + 8, c[r][1]);
  }
}

// One C block of `rows` (<= kMR) rows and kNR columns.
template <bool TA>
inline void MicroRows(int64_t rows, const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, float* C, int64_t ldc, bool acc) {
  switch (rows) {
    case 6: return Micro<6, TA>(A, lda, B, ldb, K, C, ldc, acc);
    case 5: return Micro<5, TA>(A, lda, B, ldb, K, C, ldc, acc);
    case 4: return Micro<4, TA>(A, lda, B, ldb, K, C, ldc, acc);
    case 3: return Micro<3, TA>(A, lda, B, ldb, K, C, ldc, acc);
    case 2: return Micro<2, TA>(A, lda, B, ldb, K, C, ldc, acc);
    case 1: return Micro<1, TA>(A, lda, B, ldb, K, C, ldc, acc);
    default: return;
  }
}

// Where op(A)'s row i, column k starts: A[i][k], or A[k][i] under TA.
template <bool TA>
inline const float* AAt(const float* A, int64_t lda, int64_t i, int64_t k) {
  return TA ? A + k * lda + i : A + i * lda + k;
}

// C[i0..i1)[j0..j0+16) over k in [k0, k1), with N possibly ending inside the column block
// (`cols` < 16): then B's and C's columns go through zero-padded scratch, so nothing past
// the arrays is read or written. `bpad` holds (k1 - k0) x kNR floats.
template <bool TA>
inline void Panel(int64_t i0, int64_t i1, int64_t j0, int64_t cols, int64_t k0, int64_t k1, const float* A, int64_t lda, const float* B, int64_t ldb,
                  float* C, int64_t ldc, bool acc, float* bpad) {
  const int64_t K = k1 - k0;
  if (cols == kNR) {
    for (int64_t i = i0; i < i1; i += kMR)
      MicroRows<TA>(std::min<int64_t>(kMR, i1 - i), AAt<TA>(A, lda, i, k0), lda, B + k0 * ldb + j0, ldb, K, C + i * ldc + j0, ldc, acc);
    return;
  }
  for (int64_t k = 0; k < K; k++) {
    std::memcpy(bpad + k * kNR, B + (k0 + k) * ldb + j0, cols * sizeof(float));
    std::memset(bpad + k * kNR + cols, 0, (kNR - cols) * sizeof(float));
  }
  float cpad[kMR * kNR];
  for (int64_t i = i0; i < i1; i += kMR) {
    const int64_t rows = std::min<int64_t>(kMR, i1 - i);
    for (int64_t r = 0; r < rows; r++) {
      std::memset(cpad + r * kNR, 0, sizeof(float) * kNR);
      if (acc) std::memcpy(cpad + r * kNR, C + (i + r) * ldc + j0, cols * sizeof(float));
    }
    MicroRows<TA>(rows, AAt<TA>(A, lda, i, k0), lda, bpad, kNR, K, cpad, kNR, acc);
    for (int64_t r = 0; r < rows; r++) std::memcpy(C + (i + r) * ldc + j0, cpad + r * kNR, cols * sizeof(float));
  }
}

// C[M][N] (+)= A[M][K] B[K][N] on the calling thread, for N a multiple of kNR (the attention
// kernels pad their operands so that it is).
inline void Gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  for (int64_t j = 0; j < N; j += kNR) Panel<false>(0, M, j, kNR, 0, K, A, lda, B, ldb, C, ldc, accumulate, nullptr);
}

}  // namespace sinklm
