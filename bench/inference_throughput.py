"""Inference throughput: 8 concurrent /invocations against one local serve.py vs sequential
HF `generate` calls on the same model, in the same run.

    .venv/bin/python bench/inference_throughput.py [--concurrency 8] [--new-tokens 64] [--rounds 3]
        [--hidden 384 --layers 6] [--threads 1]

The model is a random Llama (about 11M parameters by default) with the built-in tiny
tokenizer, saved to a temporary directory. Decoding is greedy and ignores end-of-sequence
(`ignore_eos` on the server, `eos_token_id=None` for the baseline), so every request
produces exactly --new-tokens tokens on both sides. Figures are generated tokens per
second of wall time; the best of --rounds rounds is kept for each side. Both sides use
--threads torch threads. Target: ratio >= 3.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "How do I reset my password?",
    "What are your business hours?",
    "Machine learning is a subset of artificial intelligence that",
    "Once upon a time there was a small model",
    "The quick brown fox",
    "Neural networks are computing systems made of layers of connected units.",
    "A user uploads training data, picks a base model, fine-tunes it with LoRA",
    "Continue the following text:",
]


def build_model(path: Path, hidden: int, layers: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from app.training.tiny_model import _build_tokenizer

    tok = _build_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=512, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model_dir: Path, log: Path, *extra: str, env: dict[str, str] | None = None
                 ) -> tuple[subprocess.Popen[bytes], str]:
    """serve.py on a free port; (process, url) once /ping answers 200."""
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "training_scripts" / "serve.py"), "--model-dir", str(model_dir),
         "--port", str(port), *extra],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"),
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"serve.py exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("serve.py did not become ready")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


class Sequential:
    """The baseline: plain HF generate in this process, one prompt at a time, KV cache on."""

    def __init__(self, model_dir: Path, prompts: list[str], new_tokens: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.gc = copy.deepcopy(self.model.generation_config)
        self.gc.update(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                       pad_token_id=tok.pad_token_id, use_cache=True)
        self.enc = [tok(p, return_tensors="pt") for p in prompts]
        self.run_one(self.enc[0])  # warm-up

    def run_one(self, e: dict) -> int:
        import torch

        with torch.inference_mode():
            out = self.model.generate(**e, generation_config=self.gc)
        return int(out.shape[1] - e["input_ids"].shape[1])

    def round(self) -> tuple[float, int]:
        t0 = time.perf_counter()
        produced = sum(self.run_one(e) for e in self.enc)
        return time.perf_counter() - t0, produced


async def measure(url: str, seq: Sequential, prompts: list[str], new_tokens: int,
                  rounds: int) -> tuple[tuple[float, int], tuple[float, int], list[int]]:
    """Rounds alternate (sequential, then concurrent) so both sides see the same machine load."""
    import httpx

    params = {"max_new_tokens": new_tokens, "ignore_eos": True, "return_full_text": False}
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as c:
        async def one(p: str) -> int:
            r = await c.post(f"{url}/invocations", json={"inputs": p, "parameters": params})
            r.raise_for_status()
            return int(r.json()[0]["details"]["completion_tokens"])

        async def batches_run() -> int:
            return int((await c.get(f"{url}/info")).json()["batches_run"])

        # warm-up: one concurrent round, which also opens one keep-alive connection per client
        await asyncio.gather(*(one(p) for p in prompts))
        best_seq, best_srv, batches = (float("inf"), 0), (float("inf"), 0), []
        for i in range(rounds):
            s_took, s_tokens = seq.round()
            before = await batches_run()
            t0 = time.perf_counter()
            counts = await asyncio.gather(*(one(p) for p in prompts))
            c_took = time.perf_counter() - t0
            batches.append(await batches_run() - before)
            print(f"  round {i + 1}: sequential {s_took:.2f}s, concurrent {c_took:.2f}s "
                  f"in {batches[-1]} batch(es)", file=sys.stderr)
            best_seq = min(best_seq, (s_took, s_tokens))
            best_srv = min(best_srv, (c_took, sum(counts)))
    return best_seq, best_srv, batches


def serve_flags(args: argparse.Namespace) -> list[str]:
    return ["--max-batch-size", str(args.concurrency), "--batch-wait-ms", str(args.batch_wait_ms),
            "--max-batch-wait-ms", str(args.max_batch_wait_ms), "--threads", str(args.threads)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    # serve.py's defaults are 10 / 50 ms. On a shared, oversubscribed CPU the OS often deschedules the
    # client for more than 10 ms between two of its 8 sends, which splits the burst into two batches.
    ap.add_argument("--batch-wait-ms", type=float, default=25.0)
    ap.add_argument("--max-batch-wait-ms", type=float, default=100.0)
    ap.add_argument("--serve-log", default=None, help="keep serve.py's stderr in this file")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads on both sides (1 by default: on a shared, oversubscribed CPU "
                         "more threads spin and slow everything; 0 = torch's default)")
    ap.add_argument("--compare", choices=["batching", "adapters", "streaming"], default="batching",
                    help="batching: the comparison above; adapters: N adapters on one endpoint vs N single-adapter "
                         "endpoints; streaming: time to first token of concurrent streams vs whole answers "
                         "(bench/serving_compare.py)")
    ap.add_argument("--adapters", type=int, default=8, help="adapters in --compare adapters")
    args = ap.parse_args()
    if args.compare != "batching":
        import serving_compare

        return serving_compare.run(args)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.concurrency)]

    import httpx
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="llmtuner-bench-") as tmp:
        model_dir = Path(tmp) / "model"
        n_params = build_model(model_dir, args.hidden, args.layers)
        log = Path(args.serve_log) if args.serve_log else Path(tmp) / "serve.log"
        proc, url = start_server(model_dir, log, *serve_flags(args))
        try:
            # The server idles while the baseline runs, and the other way round.
            seq = Sequential(model_dir, prompts, args.new_tokens)
            (seq_s, seq_tokens), (srv_s, srv_tokens), batches = asyncio.run(
                measure(url, seq, prompts, args.new_tokens, args.rounds))
            info = httpx.get(f"{url}/info").json()
        finally:
            stop_server(proc)

    seq_tps = seq_tokens / seq_s
    srv_tps = srv_tokens / srv_s
    ratio = srv_tps / seq_tps

    result = {
        "model_params_m": round(n_params / 1e6, 2),
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(0),
        "torch_threads": torch.get_num_threads(),
        "requests": len(prompts),
        "new_tokens_per_request": args.new_tokens,
        "sequential_generate": {"seconds": round(seq_s, 3), "tokens": seq_tokens, "tokens_per_s": round(seq_tps, 1)},
        "serve_concurrent": {"seconds": round(srv_s, 3), "tokens": srv_tokens, "tokens_per_s": round(srv_tps, 1),
                             "batches_per_round": batches, "largest_batch": info["largest_batch"]},
        "ratio": round(ratio, 2),
        "target": 3.0,
        "meets_target": ratio >= 3.0,
    }
    print(f"model: random Llama {result['model_params_m']}M params on {result['device']} "
          f"({result['torch_threads']} torch threads); {len(prompts)} requests x {args.new_tokens} new tokens, "
          "greedy, EOS ignored")
    print(f"sequential HF generate : {seq_tokens} tokens in {seq_s:.2f}s = {seq_tps:.1f} tokens/s")
    print(f"serve.py, {len(prompts)} concurrent: {srv_tokens} tokens in {srv_s:.2f}s = {srv_tps:.1f} tokens/s "
          f"(largest batch {info['largest_batch']})")
    print(f"batching: --batch-wait-ms {args.batch_wait_ms:g} --max-batch-wait-ms {args.max_batch_wait_ms:g}; "
          f"batches per round {batches}")
    print(f"ratio: {ratio:.2f}x (target >= 3x) {'OK' if ratio >= 3 else 'BELOW TARGET'}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
