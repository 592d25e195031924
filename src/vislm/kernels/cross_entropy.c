/* Cross-entropy over bf16 logits, turned into their gradient in place (for
 * vislm.objectives.lm_head_loss under bf16 autocast on the CPU).
 *
 * Per row of V logits: the maximum, then exp(logit - max) into a float32 scratch row while
 * summing it, then the gradient scale * (softmax - one_hot(target)) written over the
 * logits as bf16. The loss of the row, log(sum) + max - logit[target], comes out exactly
 * (no log of an underflowed probability). PyTorch's path takes a cast, a softmax, a
 * scatter and a scaled cast back: four passes over each block of rows where this takes
 * three over one row, the last two from the core's cache. Vector code: vector_math.h. */
#include <math.h>
#include <stdlib.h>

#include "vector_math.h"

/* Returns 0; -1 if a target lies outside [0, V); -2 if scratch memory was refused. */
int vislm_cross_entropy_bf16(uint16_t *logits, const int64_t *targets, float *losses,
                             int64_t n, int64_t V, float scale, int write_gradient) {
    for (int64_t r = 0; r < n; r++)
        if (targets[r] < 0 || targets[r] >= V) return -1;
    int64_t padded = (V + LANES - 1) / LANES * LANES;
    int failed = 0;
    #pragma omp parallel if (n * V >= PARALLEL_MIN) reduction(|:failed)
    {
        float *scratch = malloc((size_t)padded * sizeof(float));
        if (!scratch) failed = 1;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < n; r++) {
            if (!scratch) continue;
            uint16_t *row = logits + r * V;
            int64_t full = V / LANES * LANES;
            floats best = splat(-__builtin_inff());
            for (int64_t c = 0; c < full; c += LANES) {
                floats v = load_bf16(row + c);
                best = pick(v > best, v, best);
            }
            float max = -__builtin_inff();
            for (int l = 0; l < LANES; l++) max = best[l] > max ? best[l] : max;
            for (int64_t c = full; c < V; c++) {
                float v = load_bf16_one(row[c]);
                max = v > max ? v : max;
            }
            floats sums = splat(0.0f);
            for (int64_t c = 0; c < full; c += LANES) {
                floats e = exp_or_zero(load_bf16(row + c) - max);
                memcpy(scratch + c, &e, sizeof e);
                sums += e;
            }
            float sum = 0.0f;
            for (int l = 0; l < LANES; l++) sum += sums[l];
            for (int64_t c = full; c < V; c++) {
                floats e = exp_or_zero(splat(load_bf16_one(row[c]) - max));
                scratch[c] = e[0];
                sum += e[0];
            }
            float target_logit = load_bf16_one(row[targets[r]]);
            losses[r] = logf(sum) + max - target_logit;
            if (!write_gradient) continue;
            float factor = scale / sum;
            for (int64_t c = 0; c < full; c += LANES) {
                floats e;
                memcpy(&e, scratch + c, sizeof e);
                store_bf16(row + c, e * factor);
            }
            for (int64_t c = full; c < V; c++) row[c] = store_bf16_one(scratch[c] * factor);
            row[targets[r]] = store_bf16_one(scratch[targets[r]] * factor - scale);
        }
        free(scratch);
    }
    return failed ? -2 : 0;
}
