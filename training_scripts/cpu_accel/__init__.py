"""CPU acceleration: a layer over the plain recipe for training causal LMs on a CPU, same maths.

- labelled-positions loss (loss.py): the output head runs only where there is a label;
- sharded step (shards.py, LoRA only): one shard of the batch per thread, gradients summed.

`apply` is the one entry point. It is a context manager: for the run inside it, it gives the
Trainer class to use and what it did (recorded in training_summary.json); on exit the model's
dropout modules are back to torch's and the shard threads are gone. Nothing process-wide changes.
Off (the plain transformers Trainer) with `cpu_accel: false`, on GPUs, and for models it does not
cover (encoder-decoders, heads with logit scaling).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .loss import IGNORE_INDEX, causal_parts, labelled_loss
from .shards import ShardedStep, shardable, use_shard_dropout

__all__ = ["Acceleration", "apply", "causal_parts", "labelled_loss"]


@dataclass
class Acceleration:
    trainer_class: type
    record: dict[str, Any]


@contextmanager
def apply(model: Any, *, enabled: bool, device: str, bf16: bool, use_lora: bool,
          batch_size: int) -> Iterator[Acceleration]:
    from transformers import Trainer

    why_not = ("cpu_accel is false" if not enabled else f"device is {device}" if device != "cpu"
               else None if causal_parts(model) else "not a causal LM with a plain output head")
    if why_not:
        yield Acceleration(Trainer, {"enabled": False, "reason": why_not})
        return
    parts = causal_parts(model)
    workers = min(torch.get_num_threads(), batch_size) if use_lora and shardable(model) else 1
    step = ShardedStep(parts, [p for p in model.parameters() if p.requires_grad], workers) if workers > 1 else None
    swapped = use_shard_dropout(model) if step else []
    try:
        yield Acceleration(_trainer_class(parts, step, bf16),
                           {"enabled": True, "labelled_positions_loss": True, "batch_shards": workers})
    finally:
        for module in swapped:
            module.__class__ = torch.nn.Dropout
        if step:
            step.close()


def _trainer_class(parts: tuple[Any, Any], step: ShardedStep | None, bf16: bool) -> type:
    from transformers import Trainer

    class CpuAccelTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            if self.accelerator.unwrap_model(model) is not model:  # wrapped (DataParallel): its forward syncs
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # the decoder is called directly
                loss = labelled_loss(parts, inputs, num_items_in_batch)
            return (loss, {"loss": loss}) if return_outputs else loss

        def training_step(self, model, inputs, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            if step is None:
                return super().training_step(model, inputs, num_items_in_batch)
            model.train()
            inputs = self._prepare_inputs(inputs)
            if num_items_in_batch is None:  # a per-batch mean, averaged over the accumulation steps
                labelled = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum()
                num_items_in_batch = labelled * self.current_gradient_accumulation_steps
            return step(inputs, num_items_in_batch, bf16)

    return CpuAccelTrainer
