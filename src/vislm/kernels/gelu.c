/* GELU and its derivative in one pass, for bf16 autocast training on the CPU
 * (vislm.kernels.gelu).
 *
 * The backward of y = gelu(a) needs gelu'(a) = Phi(a) + a phi(a), whose two transcendental
 * parts, erf and exp, are the ones the forward computes anyway: erf(a / sqrt 2) takes
 * exp(-a^2 / 2) = sqrt(2 pi) phi(a). Computing both here leaves the backward a product,
 * which the input-gradient matmul applies in its epilogue.
 *
 * erf: Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, the approximation
 * PyTorch's vectorised erf uses); exp: Cephes' expf reduction and polynomial. Both well
 * inside a bf16 result's rounding. Plain C the compiler vectorises. */
#include <stdint.h>
#include <string.h>

#define PARALLEL_MIN 65536

static inline float bf16_to_float(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* exp(x) for x <= 0; below -87 (where exp underflows float32's normal range) exp(-87). */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = (float)(int32_t)(x * 1.44269504088896341f - 0.5f); /* round, x <= 0 */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

void vislm_gelu_and_derivative_bf16(const uint16_t *a, uint16_t *y, uint16_t *d, int64_t n) {
    #pragma omp parallel for simd schedule(static) if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        float x = bf16_to_float(a[i]);
        float e = exp_nonpositive(-0.5f * x * x);             /* exp(-x^2 / 2) */
        float z = x * 0.70710678118654752f, az = z < 0.0f ? -z : z;
        float t = 1.0f / (1.0f + 0.3275911f * az);
        float q = 1.061405429f;
        q = q * t - 1.453152027f;
        q = q * t + 1.421413741f;
        q = q * t - 0.284496736f;
        q = q * t + 0.254829592f;
        float erf_abs = 1.0f - q * t * e;
        float cdf = 0.5f * (1.0f + (z < 0.0f ? -erf_abs : erf_abs));
        float out = x * cdf, slope = cdf + x * e * 0.39894228040143268f;
        if (x != x) out = slope = x;                             /* NaN stays NaN */
        else if (az == (float)__builtin_inff()) { out = z < 0.0f ? 0.0f : x; slope = z < 0.0f ? 0.0f : 1.0f; }
        y[i] = float_to_bf16(out);
        d[i] = float_to_bf16(slope);
    }
}
