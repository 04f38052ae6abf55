"""Training speed-ups that keep the maths of the plain recipe (measured by bench/train_throughput.py).

- `tune_allocator`: glibc returns every freed block over its mmap threshold to the kernel, so each
  training step page-faults its activations back in (keeping them halved a CPU run's system time).
  Raising the threshold to its 32 MiB maximum and never trimming keeps those pages in the process.
- `FastDropout`: torch's CPU dropout draws one 32-bit random number per element through
  `bernoulli_`; this one takes 16 bits per element from a quarter as many 64-bit draws and keeps a
  1-byte mask for backward (~2x faster forward+backward here). The drop probability is rounded to a
  multiple of 1/65536 (0.05 -> 0.0500031). Used for LoRA's dropout on CPU only; CUDA's is already fast.
- `labelled_loss`: the causal-LM loss computed as `model(**batch).loss` is, but the output head and
  the log-softmax run only at the positions that have a label. With the loss on the response only
  (`train_on_inputs: false`), the prompt's logits were computed and thrown away.
- `ShardedBackward`: on a CPU, a batch split in as many shards as there are cores, each shard's
  forward and backward on its own thread with one intra-op thread, beats every op splitting itself
  across the cores (small matmuls and elementwise ops scale badly; OpenMP barriers cost). Shard
  gradients are summed in a fixed order and each shard's dropout has its own seeded generator, so a
  seeded run stays reproducible.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

IGNORE_INDEX = -100
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
# Families whose causal-LM head is exactly `lm_head(base_model(...).last_hidden_state)`: no logit
# soft-capping or scaling between the two (those models keep the plain `model(**batch).loss` path).
PLAIN_HEAD_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi3"})


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX): there, bf16 autocast
    runs matmuls ~4x faster than fp32; elsewhere oneDNN emulates bf16 and it is slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags)) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast(device_type: str, bf16: bool) -> Any:
    """bf16 autocast when asked (thread-local: each shard thread enters its own)."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)


def tune_allocator() -> bool:
    """Keep freed activation memory in the process (glibc only; elsewhere nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and friends have no mallopt
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    return mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x * scale, 0.0)  # x.mul(keep) would convert the mask first: 20x slower

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0.0), None, None


_shard = threading.local()  # .generator: the random generator of the shard this thread is running


class FastDropout(torch.nn.Module):
    """`nn.Dropout(p)` with a cheaper random mask (see the module docstring)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self._threshold = round(p * 65536) - 32768  # keep an element when its int16 draw is >= this

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
        draws.random_(-(2**63), None, generator=getattr(_shard, "generator", None))
        keep = draws.view(torch.int16)[:n].view(x.shape) >= self._threshold
        out: torch.Tensor = _MaskedScale.apply(x, keep, 1.0 / (1.0 - self.p))
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_lora_dropout(model: torch.nn.Module) -> int:
    """Swap every LoRA dropout (peft's `lora_dropout` ModuleDicts) for FastDropout; returns how many."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, layer in list(dropouts.items()):
            if isinstance(layer, torch.nn.Dropout) and layer.p > 0:
                dropouts[name] = FastDropout(layer.p)
                swapped += 1
    return swapped


def causal_parts(model: Any) -> tuple[Any, Any] | None:
    """(decoder, head) of a causal LM (under peft or not) whose head is plain; None otherwise."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or config.model_type not in PLAIN_HEAD_FAMILIES or config.is_encoder_decoder:
        return None
    if any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    decoder = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = base.get_output_embeddings()
    return (decoder, head) if decoder is not None and head is not None else None


def labelled_loss(parts: tuple[Any, Any], batch: dict[str, torch.Tensor],
                  num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """Next-token cross-entropy over the labelled positions, reduced as transformers reduces it:
    the sum over `num_items_in_batch` when given (gradient accumulation), else the mean."""
    decoder, head = parts
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                     use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    where = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][where]).float()
    loss = F.cross_entropy(logits, targets[where], reduction="sum")
    if num_items_in_batch is None:
        return loss / where.sum().clamp(min=1)
    return loss / num_items_in_batch


class ShardedBackward:
    """Forward and backward of a batch as `workers` shards on as many threads (see the module docstring).

    Only for models whose randomness all goes through FastDropout (`usable` says so): torch's own
    dropout would draw from the shared generator in whatever order the threads run."""

    def __init__(self, parts: tuple[Any, Any], params: list[torch.Tensor], workers: int) -> None:
        self.parts, self.params, self.workers = parts, params, workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="shard")

    @staticmethod
    def usable(model: torch.nn.Module) -> bool:
        config = getattr(model, "config", None)
        if any(getattr(config, k, 0) for k in ("attention_dropout", "attn_pdrop", "hidden_dropout")):
            return False
        return not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())

    def __call__(self, batch: dict[str, torch.Tensor], num_items: torch.Tensor | int,
                 bf16: bool = False) -> torch.Tensor:
        """Accumulates the batch's gradients into `.grad` as `labelled_loss(...).backward()` would; returns the loss."""
        rows = batch["input_ids"].shape[0]
        bounds = [rows * i // self.workers for i in range(self.workers + 1)]
        shards = [self._trimmed({k: v[a:b] for k, v in batch.items()})
                  for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
        seeds = torch.randint(0, 2**62, (len(shards),)).tolist()  # from the seeded global generator
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads // len(shards)))
        try:
            results = list(self._pool.map(self._run, shards, seeds, [num_items] * len(shards),
                                          [bf16] * len(shards)))
        finally:
            torch.set_num_threads(threads)
        for i, p in enumerate(self.params):
            grads = [r[1][i] for r in results if r[1][i] is not None]
            if grads:
                total = torch.stack(grads).sum(0) if len(grads) > 1 else grads[0]
                p.grad = total if p.grad is None else p.grad.add_(total)
        return torch.stack([r[0] for r in results]).sum()

    @staticmethod
    def _trimmed(shard: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A right-padded shard cut to its own longest row."""
        mask = shard.get("attention_mask")
        if mask is None:
            return shard
        n = int(mask.sum(1).max())
        return {k: v[:, :n] for k, v in shard.items()} if n < mask.shape[1] else shard

    def _run(self, shard: dict[str, torch.Tensor], seed: int, num_items: torch.Tensor | int,
             bf16: bool) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
        torch.set_num_threads(max(1, torch.get_num_threads()))  # this thread takes the shard's thread count
        _shard.generator = torch.Generator().manual_seed(seed)
        try:
            with autocast("cpu", bf16):
                loss = labelled_loss(self.parts, shard, num_items)
            return loss.detach(), torch.autograd.grad(loss, self.params, allow_unused=True)
        finally:
            _shard.generator = None
