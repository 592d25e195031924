"""Decoding speed: vislm's cached greedy and beam search against transformers' `generate`.

Each library decodes with its own captioner of identical size and random weights (the
benchmark pair "caption"), from the image to `seq_len` new tokens. Both are forced to run
every step: vislm gets an EOS id outside the vocabulary, which argmax never returns;
`generate` gets min_new_tokens = max_new_tokens, which masks EOS until the end. Tokens/s
counts generated tokens, image encoding included (both must encode the images).
vislm's greedy rows run its screened LM head (vislm.models.argmax_head) unless named
"plain head", which computes every float32 logit as the peer does; the tokens are the same.
"""

from __future__ import annotations

from typing import Sequence

import torch

from vislm.bench import models as M
from vislm.bench.timing import interleaved, median_of

BEAMS = 4


def _contenders(ours, peers: dict, pixels: torch.Tensor, new_tokens: int, sizes: M.Sizes) -> dict:
    never = sizes.vocab_size  # an id no argmax over the vocabulary can return

    def vislm(screened: bool = True, **options):
        def run():
            ours.text.screened_greedy = screened
            try:
                ids = ours.generate(pixels, new_tokens, bos_id=M.BOS_ID, eos_id=never, **options)
            finally:
                ours.text.screened_greedy = True
            assert ids.shape[1] == new_tokens, ids.shape
        return run

    def hf(model, beams):
        def run():
            ids = model.generate(pixel_values=pixels, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, num_beams=beams)
            assert ids.shape[1] == new_tokens + 1, ids.shape  # + the start token
        return run

    contenders = {"vislm_greedy": vislm(), "vislm_greedy_concat_cache": vislm(static_kv=False),
                  "vislm_greedy_plain_head": vislm(screened=False),
                  "vislm_beam": vislm(num_beams=BEAMS)}
    for attn, model in peers.items():
        contenders[f"hf_{attn}_greedy"] = hf(model, 1)
        contenders[f"hf_{attn}_beam"] = hf(model, BEAMS)
    return contenders


def _greedy_gflop(ours, pixels: torch.Tensor, new_tokens: int, never: int) -> float:
    """FLOPs of one greedy generate call (image encoding included): its floor at the peak."""
    from torch.utils.flop_counter import FlopCounterMode

    # The counter's module tracking trips over parameters that require grad under no_grad.
    flags = [p.requires_grad for p in ours.parameters()]
    ours.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            ours.generate(pixels, new_tokens, bos_id=M.BOS_ID, eos_id=never)
    finally:
        for p, flag in zip(ours.parameters(), flags):
            p.requires_grad_(flag)
    return counter.get_total_flops() / 1e9


@torch.inference_mode()
def _screened_equals_plain(ours, pixels: torch.Tensor, new_tokens: int, never: int) -> bool:
    """Whether greedy decoding through the screened head gave the plain head's tokens."""
    screened = ours.generate(pixels, new_tokens, bos_id=M.BOS_ID, eos_id=never)
    ours.text.screened_greedy = False
    try:
        plain = ours.generate(pixels, new_tokens, bos_id=M.BOS_ID, eos_id=never)
    finally:
        ours.text.screened_greedy = True
    return bool(torch.equal(screened, plain))


def run(sizes: M.Sizes, rounds: int, batch_sizes: Sequence[int] = (1, 16),
        log=print) -> dict:
    torch.manual_seed(0)
    ours = M.vislm_model("caption", sizes).eval()
    peers = {attn: M.peer_model("caption", sizes, attn).eval() for attn in ("sdpa", "eager")}
    new_tokens = sizes.seq_len
    results = {}
    for batch in batch_sizes:
        pixels = torch.randn(batch, 3, sizes.image_size, sizes.image_size,
                             generator=torch.Generator().manual_seed(batch))
        with torch.inference_mode():
            seconds = interleaved(_contenders(ours, peers, pixels, new_tokens, sizes), rounds, 1)
        rate = {name: batch * new_tokens / s for name, s in seconds.items()}
        row = {f"{name}_tokens_per_s": value for name, value in rate.items()}
        for strategy in ("greedy", "beam"):
            best = max(peers, key=lambda attn: rate[f"hf_{attn}_{strategy}"])
            row[f"peer_{strategy}_attention"] = best
            row[f"peer_{strategy}_tokens_per_s"] = rate[f"hf_{best}_{strategy}"]
            row[f"ratio_{strategy}"] = rate[f"vislm_{strategy}"] / rate[f"hf_{best}_{strategy}"]
        with torch.inference_mode():
            row["vislm_encode_seconds"] = median_of(lambda: ours.image_tokens(pixels), rounds)
        row["greedy_gflop"] = _greedy_gflop(ours, pixels, new_tokens, sizes.vocab_size)
        row["screened_tokens_equal_plain"] = _screened_equals_plain(ours, pixels, new_tokens,
                                                                    sizes.vocab_size)
        results[f"b{batch}"] = row
        log(f"generate b{batch}: greedy {rate['vislm_greedy']:.0f} vs "
            f"{row['peer_greedy_tokens_per_s']:.0f} tok/s ({row['ratio_greedy']:.2f}x), "
            f"beam {rate['vislm_beam']:.0f} vs {row['peer_beam_tokens_per_s']:.0f} tok/s "
            f"({row['ratio_beam']:.2f}x)")
    return results
