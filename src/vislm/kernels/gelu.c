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
 * result's rounding. Vector code: vector_math.h. */
#include "vector_math.h"

static inline void gelu_lanes(floats x, floats *out, floats *slope) {
    /* exp(-x^2 / 2); exactly 0 where that underflows, so that x exp(-x^2 / 2) is 0 for
     * every large finite x. NaN propagates through the products with x below. */
    floats e = exp_or_zero(x * x * -0.5f);
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
