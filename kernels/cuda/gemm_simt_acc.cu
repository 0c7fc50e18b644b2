// charbench: CUDA-core GEMMs that accumulate in the output type, as CUTLASS's SIMT GEMM does
// by default (ElementAccumulator = ElementC), for the paper's FP16 and INT8 runs.
//
//   gemm_simt_f16_acc16:  C (fp16) = alpha * A @ B, products and sums in half (HFMA): the sum
//                         overflows to inf once |partial sum| > 65504, as the paper's FP16
//                         CUDA-core kernel did on its N(0, 2^10) baseline.
//   gemm_simt_i8_dp4a:    C (int32) = alpha * A @ B, int8 operands, four products per __dp4a
//                         into an int32 accumulator (CUDA cores; no tensor cores).
//
// A (M, K) and B (K, N) row-major. Block tile 64x64, K step 16, 256 threads, 4x4 outputs per
// thread. Requires M % 64 == 0, N % 64 == 0, K % 16 == 0 (checked by the Python wrapper).
// Grid (N/64, M/64), block 256.

#include <cuda_fp16.h>
#include <stdint.h>

#define TB 64
#define TK 16

extern "C" __global__ void __launch_bounds__(256)
gemm_simt_f16_acc16(const __half* __restrict__ A, const __half* __restrict__ B, __half* __restrict__ C,
                    int M, int N, int K, float alpha) {
    __shared__ __half As[TK][TB];  // As[k][m]
    __shared__ __half Bs[TK][TB];  // Bs[k][n]
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int m0 = blockIdx.y * TB, n0 = blockIdx.x * TB;
    __half acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __float2half(0.f);
    for (int k0 = 0; k0 < K; k0 += TK) {
        // 64 x 16 elements per operand: 4 per thread
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            int e = tid + r * 256;
            int am = e / TK, ak = e % TK;
            As[ak][am] = A[(size_t)(m0 + am) * K + k0 + ak];
            int bk = e / TB, bn = e % TB;
            Bs[bk][bn] = B[(size_t)(k0 + bk) * N + n0 + bn];
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < TK; ++k) {
            __half a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) { a[i] = As[k][ty * 4 + i]; b[i] = Bs[k][tx * 4 + i]; }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = __hfma(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
    const __half h_alpha = __float2half(alpha);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) C[(size_t)(m0 + ty * 4 + i) * N + n0 + tx * 4 + j] = __hmul(h_alpha, acc[i][j]);
}

extern "C" __global__ void __launch_bounds__(256)
gemm_simt_i8_dp4a(const int8_t* __restrict__ A, const int8_t* __restrict__ B, int32_t* __restrict__ C,
                  int M, int N, int K, float alpha) {
    __shared__ int As[TB][TK / 4];  // four consecutive k of one row of A per int
    __shared__ int Bs[TB][TK / 4];  // four consecutive k of one column of B per int
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int m0 = blockIdx.y * TB, n0 = blockIdx.x * TB;
    int acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0;
    for (int k0 = 0; k0 < K; k0 += TK) {
        {   // 64 rows x 4 words each: one word per thread
            int m = tid >> 2, w = tid & 3;
            As[m][w] = *reinterpret_cast<const int*>(A + (size_t)(m0 + m) * K + k0 + 4 * w);
            int n = tid >> 2;
            uint32_t packed = 0;
#pragma unroll
            for (int q = 0; q < 4; ++q)
                packed |= (uint32_t)(uint8_t)B[(size_t)(k0 + 4 * w + q) * N + n0 + n] << (8 * q);
            Bs[n][w] = (int)packed;
        }
        __syncthreads();
#pragma unroll
        for (int w = 0; w < TK / 4; ++w) {
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(As[ty * 4 + i][w], Bs[tx * 4 + j][w], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
            C[(size_t)(m0 + ty * 4 + i) * N + n0 + tx * 4 + j] = alpha == 1.0f ? acc[i][j] : __float2int_rn(alpha * (float)acc[i][j]);
}
