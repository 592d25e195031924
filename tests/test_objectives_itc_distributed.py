"""ITC across processes: two real CPU processes (gloo) each hold half of a batch; the
loss averaged over ranks and the gradients averaged over ranks (what DDP does) must equal
the single-process loss and gradients over the whole batch."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vislm.objectives.itc import distributed_itc_loss, gather_with_grad, itc_loss
from vislm.registry import OBJECTIVES

WORLD, LOCAL, DIM = 2, 3, 8
# Image 5 has a caption on each rank, so the positives cross the rank boundary.
IMAGE_IDS = torch.tensor([5, 1, 2, 5, 3, 4])


def global_batch():
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(WORLD * LOCAL, DIM, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(WORLD * LOCAL, DIM, generator=g), dim=-1)
    return image, text, torch.tensor(12.0)


def loss_and_grads(loss_fn, image, text, scale, image_ids):
    image, text = image.clone().requires_grad_(), text.clone().requires_grad_()
    scale = scale.clone().requires_grad_()
    loss = loss_fn(image, text, scale, image_ids)
    loss.backward()
    return {"loss": loss.detach(), "image": image.grad, "text": text.grad, "scale": scale.grad}


def worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        image, text, scale = global_batch()
        shard = slice(rank * LOCAL, (rank + 1) * LOCAL)
        gathered = gather_with_grad(text[shard])
        results = {"gathered": gathered,
                   "plain": loss_and_grads(distributed_itc_loss, image[shard], text[shard],
                                           scale, None),
                   "ids": loss_and_grads(distributed_itc_loss, image[shard], text[shard],
                                         scale, IMAGE_IDS[shard])}
        torch.save(results, f"{out_dir}/rank{rank}.pt")
        # Neither rank tears down its gloo connections while the other may still be in a
        # collective: an early teardown can abort the slower process.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    image, text, scale = global_batch()
    assert torch.equal(ranks[0]["gathered"], text) and torch.equal(ranks[1]["gathered"], text)
    for key, ids in (("plain", None), ("ids", IMAGE_IDS)):
        single = loss_and_grads(itc_loss, image, text, scale, ids)
        local = [r[key] for r in ranks]
        mean_loss = sum(r["loss"] for r in local) / WORLD
        torch.testing.assert_close(mean_loss, single["loss"], atol=1e-6, rtol=0)
        # Each rank holds the gradient of its own shard: the all_gather backward has
        # summed into it every rank's loss terms. DDP then averages over ranks, so the
        # shards divided by the world size must be the single-process gradient.
        for name in ("image", "text"):
            stacked = torch.cat([r[name] for r in local]) / WORLD
            torch.testing.assert_close(stacked, single[name], atol=1e-6, rtol=0)
        # The temperature is replicated: its gradients average over ranks.
        torch.testing.assert_close(sum(r["scale"] for r in local) / WORLD, single["scale"],
                                   atol=1e-6, rtol=0)
        assert single["loss"] != local[0]["loss"]  # the ranks' halves differ


def test_without_a_process_group_it_is_the_single_process_loss():
    assert not dist.is_initialized()
    image, text, scale = global_batch()
    assert gather_with_grad(text) is text
    assert torch.equal(distributed_itc_loss(image, text, scale, IMAGE_IDS),
                       itc_loss(image, text, scale, IMAGE_IDS))
    assert {"itc", "itc_distributed"} <= set(OBJECTIVES.names())
    assert torch.equal(OBJECTIVES.create("itc_distributed")(image, text, scale),
                       itc_loss(image, text, scale))
