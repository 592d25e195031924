/* GELU and its derivative in one pass, for bf16 autocast training on the CPU
 * (vislm.kernels.gelu).
 *
 * The backward of y = gelu(a) needs gelu'(a) = Phi(a) + a phi(a), whose transcendental
 * parts, erf and exp, the forward computes anyway: erf(a / sqrt 2) takes
 * exp(-a^2 / 2) = sqrt(2 pi) phi(a). Computing both here leaves the backward a product,
 * which the input-gradient matmul applies in its epilogue.
 *
 * erf: Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7; PyTorch's vectorised erf
 * uses it too); exp: Cephes' expf reduction and polynomial. Both well inside a bf16
 * result's rounding. Written with GCC/Clang vector types (16 floats), which the compiler
 * maps onto the machine's SIMD registers; the bf16 conversion uses the AVX-512 BF16
 * instruction where the machine has it (the same rounding). */
#include <stdint.h>
#include <string.h>
#ifdef __AVX512BF16__
#include <immintrin.h>
#endif

#define PARALLEL_MIN 65536
#define LANES 16

typedef float floats __attribute__((vector_size(LANES * 4)));
typedef int32_t ints __attribute__((vector_size(LANES * 4)));
typedef uint32_t uints __attribute__((vector_size(LANES * 4)));
typedef uint16_t halves __attribute__((vector_size(LANES * 2)));

static inline floats splat(float v) {
    floats out;
    for (int i = 0; i < LANES; i++) out[i] = v;
    return out;
}

/* mask ? a : b, for a mask from a vector comparison (all bits set or clear per lane). */
static inline floats pick(ints mask, floats a, floats b) {
    return (floats)(((ints)a & mask) | ((ints)b & ~mask));
}

static inline floats load_bf16(const uint16_t *p) {
    halves h;
    memcpy(&h, p, sizeof h);
    return (floats)(__builtin_convertvector(h, uints) << 16);
}

/* Round to nearest even, as PyTorch rounds float32 to bf16; NaN stays a quiet NaN. */
static inline void store_bf16(uint16_t *p, floats x) {
#ifdef __AVX512BF16__
    __m256bh h = _mm512_cvtneps_pbh((__m512)x);
    memcpy(p, &h, sizeof h);
#else
    uints u = (uints)x;
    uints rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    ints nan = x != x;
    rounded = (uints)(((ints)rounded & ~nan) | ((ints)((u >> 16) | 0x40u) & nan));
    halves h = __builtin_convertvector(rounded, halves);
    memcpy(p, &h, sizeof h);
#endif
}

/* exp(x) for -87 <= x <= 0. */
static inline floats exp_nonpositive(floats x) {
    ints n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, ints); /* round, x <= 0 */
    floats nf = __builtin_convertvector(n, floats);
    floats r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    floats p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * (floats)((n + 127) << 23);
}

static inline void gelu_lanes(floats x, floats *out, floats *slope) {
    floats square = x * x;
    ints in_range = square <= 174.0f; /* exp(-x^2 / 2) is a normal float32 */
    /* exp(-x^2 / 2), exactly 0 out of range, so that x exp(-x^2 / 2) is 0 for every large
     * finite x; NaN propagates through the products with x below. */
    floats e = pick(in_range, exp_nonpositive(pick(in_range, square, splat(0.0f)) * -0.5f),
                    splat(0.0f));
    floats z = x * 0.70710678118654752f;
    ints sign = (ints)z & (int32_t)0x80000000;
    floats t = 1.0f / ((floats)((ints)z ^ sign) * 0.3275911f + 1.0f);
    floats q = splat(1.061405429f);
    q = q * t - 1.453152027f;
    q = q * t + 1.421413741f;
    q = q * t - 0.284496736f;
    q = q * t + 0.254829592f;
    floats erf = (floats)((ints)(1.0f - q * t * e) ^ sign);
    floats cdf = (erf + 1.0f) * 0.5f;
    *out = x * cdf;
    *slope = cdf + x * e * 0.39894228040143268f;
}

/* y = gelu(a) and d = gelu'(a), all bf16 of n elements. */
void vislm_gelu_and_derivative_bf16(const uint16_t *a, uint16_t *y, uint16_t *d, int64_t n) {
    int64_t blocks = n / LANES;
    #pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < blocks; i++) {
        floats out, slope;
        gelu_lanes(load_bf16(a + i * LANES), &out, &slope);
        store_bf16(y + i * LANES, out);
        store_bf16(d + i * LANES, slope);
    }
    int64_t rest = n - blocks * LANES;
    if (rest) { /* the tail through a zero-padded buffer */
        uint16_t in[LANES] = {0}, y_tail[LANES], d_tail[LANES];
        memcpy(in, a + blocks * LANES, (size_t)rest * 2);
        floats out, slope;
        gelu_lanes(load_bf16(in), &out, &slope);
        store_bf16(y_tail, out);
        store_bf16(d_tail, slope);
        memcpy(y + blocks * LANES, y_tail, (size_t)rest * 2);
        memcpy(d + blocks * LANES, d_tail, (size_t)rest * 2);
    }
}
