"""Many LoRA adapters on one base model (serve.py's multi-adapter mode).

The base model is loaded once. Adapters are registered by name with the folder or model.tar.gz they
live in, and loaded on first use into one `PeftModel`, at most `cap` at a time: the least recently
used one is unloaded to make room (it loads again when asked for). Requests for different adapters,
and for the base ("__base__"), share one `generate` call through peft's `adapter_names`.

Every method that touches the model runs on serve.py's single generate thread, so loading or
unloading never overlaps a generation.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import modeling  # noqa: E402

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class UnknownAdapter(KeyError):
    pass


_PEFT_MIXED: Any = None  # peft's own mixed-batch forward, for what the batched one does not cover
_MAX_CACHED_BATCHES = 32


def batched_lora_forward(self: Any, x: Any, *args: Any, adapter_names: list[str], **kwargs: Any) -> Any:
    """A LoRA Linear's forward for a batch whose rows use different adapters, in two batched matmuls.

    peft's own loops over the batch's adapters (slicing, two small matmuls and an indexed add each:
    8 adapters cost 8x the LoRA work per layer and step). Here each row's A and B (B scaled) are
    gathered once per `generate` (cached by the batch's adapter names; a base row gets zeros), then
    every step is x @ A_rows^T @ B_rows^T for the whole batch. Plain LoRA on 3-D inputs only; anything
    else (DoRA and other variants) goes to peft's loop.
    """
    import torch

    if x.dim() != 3 or any(n in self.lora_variant for n in adapter_names) or kwargs.get("alora_offsets"):
        return _PEFT_MIXED(self, x, *args, adapter_names=adapter_names, **kwargs)
    kwargs.pop("alora_offsets", None)
    result = self.base_layer(x, *args, **kwargs)
    known = [n for n in adapter_names if n in self.lora_A]
    if not known:
        return result
    cache = self.__dict__.setdefault("_llmtuner_rows", {})
    key = tuple(adapter_names)
    rows = cache.get(key)
    if rows is None:
        rank = max(self.lora_A[n].weight.shape[0] for n in known)
        w = self.lora_A[known[0]].weight
        a = torch.zeros((len(key), rank, w.shape[1]), dtype=w.dtype, device=w.device)
        b = torch.zeros((len(key), self.lora_B[known[0]].weight.shape[0], rank), dtype=w.dtype, device=w.device)
        for i, n in enumerate(key):
            if n in self.lora_A:
                r = self.lora_A[n].weight.shape[0]
                a[i, :r] = self.lora_A[n].weight
                b[i, :, :r] = self.lora_B[n].weight * self.scaling[n]
        if len(cache) >= _MAX_CACHED_BATCHES:
            cache.clear()
        cache[key] = rows = (a.transpose(1, 2), b.transpose(1, 2))
    a_t, b_t = rows
    return result + torch.bmm(torch.bmm(x.to(a_t.dtype), a_t), b_t).to(result.dtype)


def _use_batched_lora() -> None:
    global _PEFT_MIXED
    from peft.tuners.lora import layer

    if _PEFT_MIXED is None:
        _PEFT_MIXED = layer.Linear._mixed_batch_forward
        layer.Linear._mixed_batch_forward = batched_lora_forward


def _forget_rows(model: Any) -> None:
    """Gathered rows are stale once an adapter is loaded or unloaded."""
    for m in model.modules():
        m.__dict__.pop("_llmtuner_rows", None)


class AdapterPool:
    def __init__(self, loaded: modeling.Loaded, cap: int) -> None:
        self.loaded, self.cap = loaded, max(1, cap)
        self.base = loaded.model  # the plain base model
        self.peft: Any = None  # the PeftModel wrapping it, once an adapter was loaded
        self.sources: dict[str, str] = {}  # registered name -> folder or archive
        self.resident: OrderedDict[str, None] = OrderedDict()  # loaded names, least recently used first
        self.loads = self.evictions = 0
        self.lock = threading.Lock()  # guards `sources` (registration happens off the generate thread)

    def register(self, name: str, source: str) -> None:
        with self.lock:
            self.sources[name] = source

    def registered(self, name: str) -> bool:
        with self.lock:
            return name in self.sources

    def names(self) -> list[str]:
        with self.lock:
            return sorted(self.sources)

    def remove(self, name: str) -> bool:
        """Forget an adapter and free its weights (generate thread)."""
        with self.lock:
            known = self.sources.pop(name, None) is not None
        if name in self.resident:
            self._unload(name)
        return known

    def ensure(self, names: set[str]) -> None:
        """Load the adapters a batch needs, evicting others beyond the cap (generate thread)."""
        for name in names - {BASE}:
            if name in self.resident:
                self.resident.move_to_end(name)
                continue
            with self.lock:
                source = self.sources.get(name)
            if source is None:
                raise UnknownAdapter(name)
            while len(self.resident) >= self.cap:
                victim = next((n for n in self.resident if n not in names), None)
                if victim is None:
                    break  # the batch itself needs more than the cap: keep them all for now
                self._unload(victim)
                self.evictions += 1
            self._load(name, source)

    def _load(self, name: str, source: str) -> None:
        from peft import PeftModel

        path = str(modeling.resolve_model_dir(source))
        if self.peft is None:
            _use_batched_lora()
            self.peft = PeftModel.from_pretrained(self.base, path, adapter_name=name)
            self.peft.to(self.loaded.device)
            self.peft.eval()
        else:
            self.peft.load_adapter(path, adapter_name=name)
            self.peft.to(self.loaded.device)
        self.peft.set_adapter(name)
        _forget_rows(self.peft)
        self.resident[name] = None
        self.loaded.model = self.peft
        self.loads += 1

    def _unload(self, name: str) -> None:
        self.peft.delete_adapter(name)
        _forget_rows(self.peft)
        del self.resident[name]
        if self.resident:
            self.peft.set_adapter(next(iter(self.resident)))
        else:  # no adapter left: the base model (its LoRA layers hold nothing) answers alone
            self.loaded.model = self.peft.base_model.model  # (get_base_model needs an active adapter)

    def info(self) -> dict[str, Any]:
        lora = 0 if self.peft is None else sum(p.numel() for n, p in self.peft.named_parameters() if "lora_" in n)
        return {"registered": self.names(), "resident": list(self.resident), "max_resident": self.cap,
                "loads": self.loads, "evictions": self.evictions, "resident_adapter_parameters": lora}
