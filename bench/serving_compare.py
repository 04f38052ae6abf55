"""Two serving comparisons of bench/inference_throughput.py, each side by side in one run.

  --compare adapters   N LoRA adapters (r 8 on q/k/v/o, random weights) of one random Llama:
                       one base-model serve.py holding all N vs one single-adapter serve.py (its
                       adapter merged), the way N single-adapter endpoints each run. Resident memory
                       (VmRSS after every adapter answered once; N endpoints = N x one, as they are
                       separate processes) and aggregate tokens/s of --concurrency concurrent clients:
                       each on a different adapter of the shared server, vs all on one adapter of the
                       shared server, vs all on the single-adapter server. Targets: shared memory
                       <= 1.3x one single-adapter server; different adapters >= 0.8x one adapter.
  --compare streaming  --concurrency concurrent streams on one serve.py: time to the first text
                       (p50/p99) vs the latency of the same requests answered whole.

Rounds alternate between the sides so that both see the same machine load; greedy decoding with
end-of-sequence ignored, so every request generates exactly --new-tokens tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from inference_throughput import PROMPTS, build_model, serve_flags, start_server, stop_server


def make_adapters(base: Path, root: Path, n: int) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = []
    for i in range(n):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)), LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"))
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        d = root / f"adapter-{i}"
        model.save_pretrained(str(d))
        (d / "training_summary.json").write_text(json.dumps({"base_model": str(base), "task": "causal_lm"}))
        out.append(d)
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def burst(url: str, adapters: list[str | None], new_tokens: int, stream: bool = False) -> list[float]:
    """Concurrent requests, one per entry; seconds to the whole answer (or to the first text when streaming)."""
    params = {"max_new_tokens": new_tokens, "ignore_eos": True, "return_full_text": False}
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as c:
        async def one(i: int, adapter: str | None) -> float:
            body: dict[str, Any] = {"inputs": PROMPTS[i % len(PROMPTS)], "parameters": params}
            if adapter:
                body["adapter"] = adapter
            t0 = time.perf_counter()
            if not stream:
                (await c.post(f"{url}/invocations", json=body)).raise_for_status()
                return time.perf_counter() - t0
            first = None
            async with c.stream("POST", f"{url}/invocations", json={**body, "stream": True}) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if first is None and line.startswith("data: ") and json.loads(line[6:]).get("text"):
                        first = time.perf_counter() - t0
            return first if first is not None else time.perf_counter() - t0

        return list(await asyncio.gather(*(one(i, a) for i, a in enumerate(adapters))))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="llmtuner-bench-") as tmp:
        root = Path(tmp)
        n_params = build_model(root / "model", args.hidden, args.layers)
        print(f"model: random Llama {n_params / 1e6:.2f}M params, {args.threads} torch thread(s); "
              f"{args.concurrency} concurrent requests x {args.new_tokens} new tokens, greedy, EOS ignored")
        result = adapters(args, root) if args.compare == "adapters" else streaming(args, root)
    print(json.dumps(result))
    return 0


def adapters(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    dirs = make_adapters(root / "model", root, args.adapters)
    names = [f"a{i}" for i in range(len(dirs))]
    flags = serve_flags(args)
    shared, shared_url = start_server(root / "model", root / "shared.log", *flags, "--max-adapters",
                                      str(len(dirs)), *[f"--adapter={n}={d}" for n, d in zip(names, dirs, strict=True)])
    single, single_url = start_server(dirs[0], root / "single.log", *flags)
    try:
        warm = [names[i % len(names)] for i in range(max(len(names), args.concurrency))]
        asyncio.run(burst(shared_url, warm, 4))  # every adapter loaded once
        asyncio.run(burst(single_url, [None] * args.concurrency, 4))
        mem_shared, mem_single = rss_mib(shared.pid), rss_mib(single.pid)
        sides = {"shared_different_adapters": (shared_url, [names[i % len(names)] for i in range(args.concurrency)]),
                 "shared_one_adapter": (shared_url, [names[0]] * args.concurrency),
                 "single_adapter_server": (single_url, [None] * args.concurrency)}
        best = {k: 0.0 for k in sides}
        for r in range(args.rounds):
            for k, (url, which) in sides.items():
                took = max(asyncio.run(burst(url, which, args.new_tokens)))
                best[k] = max(best[k], len(which) * args.new_tokens / took)
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v:.0f} tok/s" for k, v in best.items()), file=sys.stderr)
        info = httpx.get(f"{shared_url}/adapters").json()
    finally:
        stop_server(shared)
        stop_server(single)
    n = len(dirs)
    mem_ratio = mem_shared / mem_single
    tps_ratio = best["shared_different_adapters"] / best["shared_one_adapter"]
    tps_vs_single = best["shared_different_adapters"] / best["single_adapter_server"]
    print(f"resident memory: one server with {n} adapters {mem_shared:.0f} MiB; one single-adapter server "
          f"{mem_single:.0f} MiB ({n} of them: {n * mem_single:.0f} MiB); ratio {mem_ratio:.2f}x (target <= 1.3x) "
          f"{'OK' if mem_ratio <= 1.3 else 'ABOVE TARGET'}")
    for k, v in best.items():
        print(f"{k:>26}: {v:.0f} tokens/s")
    print(f"different adapters / one adapter on the shared server: {tps_ratio:.2f}x (target >= 0.8x) "
          f"{'OK' if tps_ratio >= 0.8 else 'BELOW TARGET'}; / the single-adapter server: {tps_vs_single:.2f}x")
    return {"adapters": n, "rss_mib": {"shared": round(mem_shared, 1), "single_adapter": round(mem_single, 1),
                                       "n_single_adapter": round(n * mem_single, 1)},
            "memory_ratio": round(mem_ratio, 3), "tokens_per_s": {k: round(v, 1) for k, v in best.items()},
            "throughput_ratio": round(tps_ratio, 3), "throughput_vs_single_server": round(tps_vs_single, 3),
            "resident_adapters": len(info["resident"])}


def streaming(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    proc, url = start_server(root / "model", root / "serve.log", *serve_flags(args))
    ttft: list[float] = []
    whole: list[float] = []
    try:
        asyncio.run(burst(url, [None] * args.concurrency, 4))
        for r in range(args.rounds):
            ttft += asyncio.run(burst(url, [None] * args.concurrency, args.new_tokens, stream=True))
            whole += asyncio.run(burst(url, [None] * args.concurrency, args.new_tokens))
            print(f"  round {r + 1}: first text p50 {1000 * statistics.median(ttft):.0f} ms, "
                  f"whole p50 {1000 * statistics.median(whole):.0f} ms", file=sys.stderr)
    finally:
        stop_server(proc)
    def ms(xs: list[float]) -> dict[str, float]:
        return {"p50": round(1000 * pct(xs, 0.5), 1), "p99": round(1000 * pct(xs, 0.99), 1)}

    out: dict[str, Any] = {"samples": len(ttft), "ttft_ms": ms(ttft), "whole_ms": ms(whole)}
    print(f"{args.concurrency} concurrent streams: first text p50 {out['ttft_ms']['p50']:.0f} ms, "
          f"p99 {out['ttft_ms']['p99']:.0f} ms; the same requests answered whole: p50 {out['whole_ms']['p50']:.0f} ms, "
          f"p99 {out['whole_ms']['p99']:.0f} ms ({len(ttft)} samples each)")
    out["ttft_over_whole_p50"] = round(pct(ttft, 0.5) / pct(whole, 0.5), 3)
    return out
