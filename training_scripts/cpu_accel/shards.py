"""A training step as one shard of the batch per thread.

On a CPU, small matmuls and elementwise ops split across cores scale poorly (each op waits on its
slowest thread); whole shards of the batch, each on its own thread with one intra-op thread, keep
every core busy. Shard gradients are summed in a fixed order, and each shard's dropout draws from
its own generator seeded from torch's global one, so a seeded run stays reproducible.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from .loss import labelled_loss

_shard = threading.local()  # the running shard's dropout generator
# Dropout the model applies as a function from its config, not through a module (not shardable)
FUNCTIONAL_DROPOUT = ("attention_dropout", "attn_pdrop", "hidden_dropout", "resid_pdrop", "embd_pdrop")


class ShardDropout(torch.nn.Dropout):
    """nn.Dropout that draws from the running shard's generator (torch's own dropout outside a shard)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        generator = getattr(_shard, "generator", None)
        if generator is None or not self.training or self.p == 0:
            return super().forward(x)
        keep = torch.empty_like(x).bernoulli_(1 - self.p, generator=generator)
        return x * keep * (1 / (1 - self.p))


def shardable(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    return not any(getattr(config, k, 0) for k in FUNCTIONAL_DROPOUT)


def use_shard_dropout(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Turns the model's dropout modules into ShardDropout (same maths); returns them."""
    dropouts = [m for m in model.modules() if type(m) is torch.nn.Dropout]
    for m in dropouts:
        m.__class__ = ShardDropout
    return dropouts


def split(batch: dict[str, torch.Tensor], count: int) -> list[dict[str, torch.Tensor]]:
    """The batch's rows, longest first, in `count` shards of about equal row counts, each cut to its own
    longest row (the collator pads on the right)."""
    rows = batch["input_ids"].shape[0]
    mask = batch.get("attention_mask")
    if mask is not None:
        order = torch.sort(mask.sum(1), descending=True, stable=True).indices
        batch = {k: v[order] for k, v in batch.items()}
    count = min(rows, count)
    bounds = [rows * i // count for i in range(count + 1)]
    shards = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        shard = {k: v[a:b] for k, v in batch.items()}
        if mask is not None:
            width = int(shard["attention_mask"].sum(1).max())
            shard = {k: v[:, :width] for k, v in shard.items()}
        shards.append(shard)
    return shards


class ShardedStep:
    """Forward and backward of a batch as `workers` shards on as many threads; accumulates into `.grad`
    what `labelled_loss(...).backward()` would, and returns the loss."""

    def __init__(self, parts: tuple[Any, Any], params: list[torch.Tensor], workers: int) -> None:
        self.parts, self.params, self.workers = parts, params, workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="shard")

    def __call__(self, batch: dict[str, torch.Tensor], num_items: torch.Tensor | int, bf16: bool) -> torch.Tensor:
        shards = split(batch, self.workers)
        seeds = torch.randint(0, 2**62, (len(shards),)).tolist()  # from the seeded global generator
        threads = torch.get_num_threads()
        per_shard = max(1, threads // len(shards))
        torch.set_num_threads(per_shard)
        try:
            results = list(self._pool.map(self._run, shards, seeds, [num_items] * len(shards),
                                          [bf16] * len(shards), [per_shard] * len(shards)))
        finally:
            torch.set_num_threads(threads)
        for i, p in enumerate(self.params):
            grads = [r[1][i] for r in results if r[1][i] is not None]
            if grads:
                total = torch.stack(grads).sum(0) if len(grads) > 1 else grads[0]
                p.grad = total if p.grad is None else p.grad.add_(total)
        return torch.stack([r[0] for r in results]).sum()

    def _run(self, shard: dict[str, torch.Tensor], seed: int, num_items: torch.Tensor | int, bf16: bool,
             threads: int) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
        torch.set_num_threads(threads)
        _shard.generator = torch.Generator().manual_seed(seed)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = labelled_loss(self.parts, shard, num_items)
            return loss.detach(), torch.autograd.grad(loss, self.params, allow_unused=True)
        finally:
            _shard.generator = None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
