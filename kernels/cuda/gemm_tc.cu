// charbench: tensor-core GEMM with mma.sync (m16n8k16), fp16 or bf16 in, fp32 accumulate.
//
//   C[M,N] = alpha * A[M,K] @ B[K,N]    A row-major (M,K); B given K-major as Bt (N,K) row-major;
//                                       C row-major (M,N) in the input dtype.
//
// Block tile 128x128x32, 8 warps (2 along M x 4 along N), warp tile 64x32 = 4x4 mma tiles.
// A 4-stage cp.async pipeline fills shared memory; ldmatrix reads fragments from it. Rows of
// a tile are 64 bytes, so the four 16-byte chunks of a row are XOR-swizzled with (row/2)%4 to
// keep ldmatrix free of bank conflicts. Requires sm_80+, M % 128 == 0, N % 128 == 0,
// K % 32 == 0 (checked by the Python wrapper).
//
// Entry points (extern "C"): gemm_tc_f16, gemm_tc_bf16. Grid (N/128, M/128), block 256,
// dynamic shared memory STAGES * 2 * 128 * 32 * 2 bytes = 64 KiB.

#include <cuda_fp16.h>
#include <cuda_bf16.h>

#define BM 128
#define BN 128
#define BK 32
#define STAGES 4
#define THREADS 256

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"(smem_u32(smem)), "l"(gmem));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}

// element offset of (row, 16-byte chunk) inside a [rows][32] half tile, swizzled
__device__ __forceinline__ int swz(int row, int chunk) {
    return row * BK + ((chunk ^ ((row >> 1) & 3)) << 3);
}

template <bool BF16>
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    if (BF16) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

__device__ __forceinline__ unsigned pack2(float x, float y, bool bf16) {
    if (bf16) {
        __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
        return *reinterpret_cast<unsigned*>(&h);
    }
    __half2 h = __floats2half2_rn(x, y);
    return *reinterpret_cast<unsigned*>(&h);
}

template <bool BF16>
__device__ __forceinline__ void gemm_tc(const unsigned short* __restrict__ A, const unsigned short* __restrict__ Bt,
                                        unsigned short* __restrict__ C, int M, int N, int K, float alpha) {
    extern __shared__ __align__(128) unsigned short smem[];
    unsigned short* As = smem;                       // [STAGES][BM*BK]
    unsigned short* Bs = smem + STAGES * BM * BK;    // [STAGES][BN*BK]

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int wm = warp >> 2;  // 0..1 -> rows wm*64
    const int wn = warp & 3;   // 0..3 -> cols wn*32
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;
    const int ktiles = K / BK;

    // each thread copies 2 chunks of A and 2 of B per stage (512 16-byte chunks each)
    auto load_stage = [&](int stage, int kt) {
        const int k0 = kt * BK;
        unsigned short* as = As + stage * BM * BK;
        unsigned short* bs = Bs + stage * BN * BK;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int idx = tid + i * THREADS;
            const int row = idx >> 2, chunk = idx & 3;
            cp_async16(as + swz(row, chunk), A + (size_t)(m0 + row) * K + k0 + chunk * 8);
            cp_async16(bs + swz(row, chunk), Bt + (size_t)(n0 + row) * K + k0 + chunk * 8);
        }
    };

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_stage(s, s);
        cp_async_commit();
    }

    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        {   // refill the stage computed in the previous iteration
            const int nk = kt + STAGES - 1;
            if (nk < ktiles) load_stage(nk % STAGES, nk);
            cp_async_commit();
        }
        const unsigned short* as = As + (kt % STAGES) * BM * BK;
        const unsigned short* bs = Bs + (kt % STAGES) * BN * BK;
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            unsigned af[4][4];
            unsigned bf[4][2];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int row = wm * 64 + i * 16 + (lane & 15);
                const int chunk = kk * 2 + (lane >> 4);
                ldmatrix_x4(af[i], as + swz(row, chunk));
            }
#pragma unroll
            for (int j = 0; j < 2; ++j) {  // each x4 covers two n8 tiles x k16
                const int row = wn * 32 + j * 16 + (lane & 7) + ((lane >> 4) << 3);
                const int chunk = kk * 2 + ((lane >> 3) & 1);
                unsigned r[4];
                ldmatrix_x4(r, bs + swz(row, chunk));
                bf[2 * j][0] = r[0]; bf[2 * j][1] = r[1];
                bf[2 * j + 1][0] = r[2]; bf[2 * j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma16816<BF16>(acc[i][j], af[i], bf[j][0], bf[j][1]);
        }
    }
    cp_async_wait<0>();

    // epilogue: c0,c1 at (lane/4, 2*(lane%4)+{0,1}); c2,c3 eight rows below
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int row = m0 + wm * 64 + i * 16 + (lane >> 2);
            const int col = n0 + wn * 32 + j * 8 + ((lane & 3) << 1);
            *reinterpret_cast<unsigned*>(C + (size_t)row * N + col) = pack2(alpha * acc[i][j][0], alpha * acc[i][j][1], BF16);
            *reinterpret_cast<unsigned*>(C + (size_t)(row + 8) * N + col) = pack2(alpha * acc[i][j][2], alpha * acc[i][j][3], BF16);
        }
    }
}

extern "C" __global__ void __launch_bounds__(THREADS, 2)
gemm_tc_f16(const unsigned short* __restrict__ A, const unsigned short* __restrict__ Bt,
            unsigned short* __restrict__ C, int M, int N, int K, float alpha) {
    gemm_tc<false>(A, Bt, C, M, N, K, alpha);
}

extern "C" __global__ void __launch_bounds__(THREADS, 2)
gemm_tc_bf16(const unsigned short* __restrict__ A, const unsigned short* __restrict__ Bt,
             unsigned short* __restrict__ C, int M, int N, int K, float alpha) {
    gemm_tc<true>(A, Bt, C, M, N, K, alpha);
}
