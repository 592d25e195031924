"""Retrieval evaluation at COCO 5k-test scale, and FAISS search latency.

Scoring: `retrieval_metrics_from_embeddings` on random unit vectors, 5 captions per
image (5,000 images x 25,000 captions, D=256 at full size): the time of one whole
evaluation, similarity blocks and R@K included, as a retrieval task runs it.

FAISS: an exact inner-product index (IndexFlatIP) of 100,000 vectors, searched for the
top 10 one query at a time (interactive latency) and as one batch (offline throughput).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vislm.bench.timing import median_of


@dataclass(frozen=True)
class RetrievalSizes:
    images: int = 5000
    captions_per_image: int = 5
    dim: int = 256
    index_size: int = 100_000
    single_queries: int = 200
    batch_queries: int = 1000
    top_k: int = 10


FULL = RetrievalSizes()
QUICK = RetrievalSizes(images=50, dim=16, index_size=1000, single_queries=10, batch_queries=20)


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    x = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(x, dim=1)


def score(s: RetrievalSizes, repeats: int) -> dict:
    from vislm.metrics.retrieval import retrieval_metrics_from_embeddings

    images = _unit(s.images, s.dim, 0)
    # Each caption near its image, so the recalls are not all zero (a sanity check below).
    index = torch.arange(s.images).repeat_interleave(s.captions_per_image)
    texts = torch.nn.functional.normalize(images[index] + 0.5 * _unit(len(index), s.dim, 1), dim=1)
    metrics = {}

    def run():
        metrics.update(retrieval_metrics_from_embeddings(images, texts, index))

    seconds = median_of(run, repeats)
    return {"images": s.images, "captions": len(index), "dim": s.dim, "seconds": seconds,
            "i2t_R@1": metrics["i2t_R@1"], "t2i_R@1": metrics["t2i_R@1"]}


def faiss_search(s: RetrievalSizes, repeats: int) -> dict:
    try:
        import faiss
    except ImportError:
        return {"skipped": "faiss is not installed (pip install 'vislm[index]')"}
    import time

    vectors = _unit(s.index_size, s.dim, 2).numpy()
    queries = _unit(s.batch_queries, s.dim, 3).numpy()
    start = time.perf_counter()
    index = faiss.IndexFlatIP(s.dim)
    index.add(vectors)
    build = time.perf_counter() - start

    def one_at_a_time():
        for i in range(s.single_queries):
            index.search(queries[i:i + 1], s.top_k)

    single = median_of(one_at_a_time, repeats) / s.single_queries
    batched = median_of(lambda: index.search(queries, s.top_k), repeats)
    return {"index_size": s.index_size, "dim": s.dim, "top_k": s.top_k,
            "build_seconds": build, "faiss_threads": faiss.omp_get_max_threads(),
            "single_query_ms": single * 1e3,
            "batch_queries": s.batch_queries, "batch_ms": batched * 1e3,
            "batch_ms_per_query": batched * 1e3 / s.batch_queries}


def run(s: RetrievalSizes, repeats: int, log=print) -> dict:
    result = {"score": score(s, repeats), "faiss": faiss_search(s, repeats)}
    log(f"retrieval: {result['score']['images']} x {result['score']['captions']} scored in "
        f"{result['score']['seconds']:.2f} s")
    if "single_query_ms" in result["faiss"]:
        log(f"faiss: {result['faiss']['single_query_ms']:.2f} ms/query alone, "
            f"{result['faiss']['batch_ms_per_query']:.3f} ms/query batched")
    return result
