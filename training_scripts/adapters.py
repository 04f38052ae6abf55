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
            self.peft = PeftModel.from_pretrained(self.base, path, adapter_name=name)
            self.peft.to(self.loaded.device)
            self.peft.eval()
        else:
            self.peft.load_adapter(path, adapter_name=name)
            self.peft.to(self.loaded.device)
        self.peft.set_adapter(name)
        self.resident[name] = None
        self.loaded.model = self.peft
        self.loads += 1

    def _unload(self, name: str) -> None:
        self.peft.delete_adapter(name)
        del self.resident[name]
        if self.resident:
            self.peft.set_adapter(next(iter(self.resident)))
        else:  # no adapter left: the base model (its LoRA layers hold nothing) answers alone
            self.loaded.model = self.peft.base_model.model  # (get_base_model needs an active adapter)

    def info(self) -> dict[str, Any]:
        lora = 0 if self.peft is None else sum(p.numel() for n, p in self.peft.named_parameters() if "lora_" in n)
        return {"registered": self.names(), "resident": list(self.resident), "max_resident": self.cap,
                "loads": self.loads, "evictions": self.evictions, "resident_adapter_parameters": lora}
