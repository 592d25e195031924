/* Fused LayerNorm kernels for bf16 autocast training on the CPU (vislm.kernels).
 *
 * Under bf16 autocast a pre-norm Transformer block adds a bf16 branch output to its
 * float32 residual stream, normalises the sum in float32 and casts the result to bf16
 * for the next matmul: three passes over the largest activations, and three more in the
 * backward. Here each is one pass. Plain C: the compiler vectorises the row loops for the
 * machine it builds on; rows are split over threads with OpenMP (the runtime PyTorch
 * uses, so the two share one thread pool). Scalar bf16 helpers: vector_math.h.
 */
#include <math.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "vector_math.h"

/* sum = x + h (h bf16; with h NULL the sum is x itself and sum_out is not written);
 * y = LayerNorm(sum) * weight + bias as bf16 (weight and bias NULL: no affine);
 * mean and rstd (1 / sqrt(var + eps)) per row, float32, as torch's layer_norm saves them. */
void vislm_add_layer_norm_bf16(const float *x, const uint16_t *h, const float *weight,
                               const float *bias, float *sum_out, uint16_t *y, float *mean,
                               float *rstd, int64_t rows, int64_t C, float eps) {
    #pragma omp parallel for schedule(static) if (rows * C >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * C;
        const float *v = xr;
        float total = 0.0f;
        if (h) {
            const uint16_t *hr = h + r * C;
            float *sr = sum_out + r * C;
            #pragma omp simd reduction(+:total)
            for (int64_t c = 0; c < C; c++) {
                float s = xr[c] + load_bf16_one(hr[c]);
                sr[c] = s;
                total += s;
            }
            v = sr;
        } else {
            #pragma omp simd reduction(+:total)
            for (int64_t c = 0; c < C; c++) total += xr[c];
        }
        float mu = total / (float)C, squares = 0.0f;
        #pragma omp simd reduction(+:squares)
        for (int64_t c = 0; c < C; c++) {
            float d = v[c] - mu;
            squares += d * d;
        }
        float rs = 1.0f / sqrtf(squares / (float)C + eps);
        uint16_t *yr = y + r * C;
        if (weight) {
            #pragma omp simd
            for (int64_t c = 0; c < C; c++)
                yr[c] = store_bf16_one((v[c] - mu) * rs * weight[c] + (bias ? bias[c] : 0.0f));
        } else {
            #pragma omp simd
            for (int64_t c = 0; c < C; c++) yr[c] = store_bf16_one((v[c] - mu) * rs);
        }
        mean[r] = mu;
        rstd[r] = rs;
    }
}

/* The backward of the above for grad_y (bf16): grad_x = grad_sum (float32, the residual
 * stream's own gradient; NULL: none) + dLayerNorm/dx . grad_y; grad_h = grad_x as bf16
 * (NULL: not wanted); grad_weight and grad_bias summed over rows (NULL: not wanted).
 * x is the normalised input (the sum), mean and rstd from the forward.
 * Returns 0, or -1 where the partial sums could not be allocated (nothing written). */
int vislm_layer_norm_bf16_backward(const uint16_t *grad_y, const float *grad_sum,
                                    const float *x, const float *mean, const float *rstd,
                                    const float *weight, float *grad_x, uint16_t *grad_h,
                                    float *grad_weight, float *grad_bias, int64_t rows,
                                    int64_t C) {
    int threads = 1;
#ifdef _OPENMP
    if (rows * C >= PARALLEL_MIN) threads = omp_get_max_threads();
#endif
    /* Per-thread partial sums of the weight and bias gradients, added in thread order
     * afterwards, so a result does not depend on which thread finished first. */
    float *partial = NULL;
    if (grad_weight || grad_bias) {
        partial = calloc((size_t)threads * 2 * (size_t)C, sizeof(float));
        if (!partial) return -1;
    }
    #pragma omp parallel num_threads(threads)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        float *pw = partial ? partial + (size_t)t * 2 * (size_t)C : NULL;
        float *pb = partial ? pw + C : NULL;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const uint16_t *gr = grad_y + r * C;
            const float *xr = x + r * C;
            float mu = mean[r], rs = rstd[r], sum_g = 0.0f, sum_gn = 0.0f;
            #pragma omp simd reduction(+:sum_g, sum_gn)
            for (int64_t c = 0; c < C; c++) {
                float g = load_bf16_one(gr[c]), n = (xr[c] - mu) * rs;
                float gw = weight ? g * weight[c] : g;
                sum_g += gw;
                sum_gn += gw * n;
            }
            if (pw) {
                #pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    float g = load_bf16_one(gr[c]);
                    pw[c] += g * (xr[c] - mu) * rs;
                    pb[c] += g;
                }
            }
            sum_g /= (float)C;
            sum_gn /= (float)C;
            float *gxr = grad_x + r * C;
            const float *gsr = grad_sum ? grad_sum + r * C : NULL;
            #pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                float g = load_bf16_one(gr[c]), n = (xr[c] - mu) * rs;
                float gw = weight ? g * weight[c] : g;
                float out = rs * (gw - sum_g - n * sum_gn) + (gsr ? gsr[c] : 0.0f);
                gxr[c] = out;
                if (grad_h) grad_h[r * C + c] = store_bf16_one(out);
            }
        }
    }
    if (partial) {
        for (int64_t c = 0; c < C; c++) {
            float w = 0.0f, b = 0.0f;
            for (int t = 0; t < threads; t++) {
                w += partial[(size_t)t * 2 * (size_t)C + c];
                b += partial[(size_t)t * 2 * (size_t)C + C + c];
            }
            if (grad_weight) grad_weight[c] = w;
            if (grad_bias) grad_bias[c] = b;
        }
        free(partial);
    }
    return 0;
}
