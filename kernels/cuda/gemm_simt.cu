// charbench: tiled shared-memory SIMT GEMM on CUDA cores (no tensor cores).
//
//   C[M,N] = alpha * A[M,K] @ B[K,N]     A, B, C row-major; fp32 accumulation (FFMA)
//
// Block tile 128x128x8, 256 threads, each thread an 8x8 register tile (two 4-wide strips in
// each direction so shared-memory reads are conflict-free float4s), double-buffered shared
// memory with the next global tile prefetched into registers while the current one is used.
// Requires M % 128 == 0, N % 128 == 0, K % 8 == 0 (checked by the Python wrapper).
//
// fp16 variant: operands are fp16 in global memory and converted to fp32 when they enter
// shared memory; the multiply-adds are fp32 FFMA and C is written in fp16. (The paper's
// CUTLASS SIMT kernel accumulated in half precision, which overflows to inf on its own
// N(0, 2^10) inputs; charbench keeps the outputs finite.)
//
// Entry points (extern "C"): gemm_simt_f32, gemm_simt_f16. Grid (N/128, M/128), block 256.

#include <cuda_fp16.h>

#define BM 128
#define BN 128
#define BK 8
#define TM 8
#define TN 8

__device__ __forceinline__ void load_a_tile(const float* __restrict__ A, int K, int m0, int k0, int tid, float (&ra)[4]) {
    // 128 rows x 8 cols: one float4 per thread (row = tid/2, col = (tid%2)*4)
    int row = tid >> 1, col = (tid & 1) << 2;
    float4 v = *reinterpret_cast<const float4*>(A + (size_t)(m0 + row) * K + k0 + col);
    ra[0] = v.x; ra[1] = v.y; ra[2] = v.z; ra[3] = v.w;
}

__device__ __forceinline__ void load_b_tile(const float* __restrict__ B, int N, int n0, int k0, int tid, float (&rb)[4]) {
    // 8 rows x 128 cols: one float4 per thread (row = tid/32, col = (tid%32)*4)
    int row = tid >> 5, col = (tid & 31) << 2;
    float4 v = *reinterpret_cast<const float4*>(B + (size_t)(k0 + row) * N + n0 + col);
    rb[0] = v.x; rb[1] = v.y; rb[2] = v.z; rb[3] = v.w;
}

__device__ __forceinline__ void load_a_tile(const __half* __restrict__ A, int K, int m0, int k0, int tid, float (&ra)[4]) {
    // 128 rows x 8 halves: four halves (8 bytes) per thread
    int row = tid >> 1, col = (tid & 1) << 2;
    uint2 raw = *reinterpret_cast<const uint2*>(A + (size_t)(m0 + row) * K + k0 + col);
    __half2 h0 = *reinterpret_cast<__half2*>(&raw.x), h1 = *reinterpret_cast<__half2*>(&raw.y);
    float2 f0 = __half22float2(h0), f1 = __half22float2(h1);
    ra[0] = f0.x; ra[1] = f0.y; ra[2] = f1.x; ra[3] = f1.y;
}

__device__ __forceinline__ void load_b_tile(const __half* __restrict__ B, int N, int n0, int k0, int tid, float (&rb)[4]) {
    int row = tid >> 5, col = (tid & 31) << 2;
    uint2 raw = *reinterpret_cast<const uint2*>(B + (size_t)(k0 + row) * N + n0 + col);
    __half2 h0 = *reinterpret_cast<__half2*>(&raw.x), h1 = *reinterpret_cast<__half2*>(&raw.y);
    float2 f0 = __half22float2(h0), f1 = __half22float2(h1);
    rb[0] = f0.x; rb[1] = f0.y; rb[2] = f1.x; rb[3] = f1.y;
}

__device__ __forceinline__ void store_c4(float* C, size_t off, const float* v, float alpha) {
    *reinterpret_cast<float4*>(C + off) = make_float4(alpha * v[0], alpha * v[1], alpha * v[2], alpha * v[3]);
}

__device__ __forceinline__ void store_c4(__half* C, size_t off, const float* v, float alpha) {
    __half2 h0 = __floats2half2_rn(alpha * v[0], alpha * v[1]);
    __half2 h1 = __floats2half2_rn(alpha * v[2], alpha * v[3]);
    uint2 raw;
    raw.x = *reinterpret_cast<unsigned int*>(&h0);
    raw.y = *reinterpret_cast<unsigned int*>(&h1);
    *reinterpret_cast<uint2*>(C + off) = raw;
}

template <typename T>
__device__ __forceinline__ void gemm_simt(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C,
                                          int M, int N, int K, float alpha) {
    __shared__ __align__(16) float As[2][BK][BM];  // A tile stored transposed: As[k][m]
    __shared__ __align__(16) float Bs[2][BK][BN];

    const int tid = threadIdx.x;
    const int tx = tid & 15;   // column group: cols tx*4 and 64 + tx*4
    const int ty = tid >> 4;   // row group:    rows ty*4 and 64 + ty*4
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

    float ra[4], rb[4];
    const int a_row = tid >> 1, a_col = (tid & 1) << 2;
    const int b_row = tid >> 5, b_col = (tid & 31) << 2;

    load_a_tile(A, K, m0, 0, tid, ra);
    load_b_tile(B, N, n0, 0, tid, rb);
#pragma unroll
    for (int i = 0; i < 4; ++i) As[0][a_col + i][a_row] = ra[i];
    *reinterpret_cast<float4*>(&Bs[0][b_row][b_col]) = make_float4(rb[0], rb[1], rb[2], rb[3]);
    __syncthreads();

    const int ktiles = K / BK;
    for (int kt = 0; kt < ktiles; ++kt) {
        const int cur = kt & 1;
        const bool has_next = kt + 1 < ktiles;
        if (has_next) {  // prefetch the next tile into registers while computing this one
            load_a_tile(A, K, m0, (kt + 1) * BK, tid, ra);
            load_b_tile(B, N, n0, (kt + 1) * BK, tid, rb);
        }
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[TM], b[TN];
            float4 a0 = *reinterpret_cast<const float4*>(&As[cur][k][ty * 4]);
            float4 a1 = *reinterpret_cast<const float4*>(&As[cur][k][64 + ty * 4]);
            float4 b0 = *reinterpret_cast<const float4*>(&Bs[cur][k][tx * 4]);
            float4 b1 = *reinterpret_cast<const float4*>(&Bs[cur][k][64 + tx * 4]);
            a[0] = a0.x; a[1] = a0.y; a[2] = a0.z; a[3] = a0.w;
            a[4] = a1.x; a[5] = a1.y; a[6] = a1.z; a[7] = a1.w;
            b[0] = b0.x; b[1] = b0.y; b[2] = b0.z; b[3] = b0.w;
            b[4] = b1.x; b[5] = b1.y; b[6] = b1.z; b[7] = b1.w;
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (has_next) {
            const int nxt = cur ^ 1;
#pragma unroll
            for (int i = 0; i < 4; ++i) As[nxt][a_col + i][a_row] = ra[i];
            *reinterpret_cast<float4*>(&Bs[nxt][b_row][b_col]) = make_float4(rb[0], rb[1], rb[2], rb[3]);
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int row = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
        store_c4(C, (size_t)row * N + n0 + tx * 4, &acc[i][0], alpha);
        store_c4(C, (size_t)row * N + n0 + 64 + tx * 4, &acc[i][4], alpha);
    }
}

extern "C" __global__ void __launch_bounds__(256)
gemm_simt_f32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
              int M, int N, int K, float alpha) {
    gemm_simt<float>(A, B, C, M, N, K, alpha);
}

extern "C" __global__ void __launch_bounds__(256)
gemm_simt_f16(const __half* __restrict__ A, const __half* __restrict__ B, __half* __restrict__ C,
              int M, int N, int K, float alpha) {
    gemm_simt<__half>(A, B, C, M, N, K, alpha);
}
