/* Vector helpers shared by vislm's C kernels: 16 float32 lanes as GCC/Clang vector types
 * (the compiler maps them onto the machine's SIMD registers), bf16 loads and stores, and
 * exp for non-positive arguments. */
#ifndef VISLM_VECTOR_MATH_H
#define VISLM_VECTOR_MATH_H

#include <stdint.h>
#include <string.h>
#ifdef __AVX512BF16__
#include <immintrin.h>
#endif

/* Below this many elements a call runs on one thread (thread start-up would dominate). */
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

static inline float load_bf16_one(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even, as PyTorch rounds float32 to bf16; NaN stays a quiet NaN. */
static inline uint16_t store_bf16_one(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded);
}

/* The same for 16 lanes. */
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

/* exp(x) for -87 <= x <= 0 (Cephes' expf: Cody-Waite reduction, degree-5 polynomial). */
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

/* exp(x) for x <= 0, exactly 0 below -87 (where it leaves float32's normal range). */
static inline floats exp_or_zero(floats x) {
    ints in_range = x >= -87.0f;
    return pick(in_range, exp_nonpositive(pick(in_range, x, splat(0.0f))), splat(0.0f));
}

#endif
