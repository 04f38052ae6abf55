"""Benchmark the dataset pipeline: validate+convert vs a bare json.loads loop, token stats vs one batched pass.

    .venv/bin/python bench/dataset_pipeline.py                  # generates a 200 MB JSONL in a temp dir
    .venv/bin/python bench/dataset_pipeline.py --file my.jsonl  # or measures your file
    .venv/bin/python bench/dataset_pipeline.py --size-mb 1024 --runs 3

Each parsing path runs in its own child process so that its peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) is its own; MB/s are medians of --runs runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000
_WORDS = (
    "the a order refund account shipping delivery invoice password reset model data train customer "
    "support please thank you help with how can I my your is are was be to of and in on for it that "
    "this we will would should could issue problem solution question answer"
).split()
_RARE = "café naïve résumé 日本語 😀".split()  # ~3% of the records are not pure ASCII


def generate(path: Path, size_mb: int, seed: int = 0, ensure_ascii: bool = True) -> int:
    """Write prompt/response JSONL of about `size_mb` MB; lengths vary from a few words to ~2,000.

    `ensure_ascii` is json.dumps's default (non-ASCII written as \\uXXXX escapes), as most
    Python-made JSONL is; --raw-utf8 writes the characters themselves.
    """
    rng = random.Random(seed)
    vocab = [" ".join(rng.choice(_WORDS) for _ in range(n)) for n in (1, 3, 8, 20, 50, 120)]
    target, written, n = size_mb * MB, 0, 0
    with path.open("wb") as f:
        buf: list[str] = []
        while written < target:
            prompt = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 4)))
            if rng.random() < 0.03:
                prompt += " " + rng.choice(_RARE)
            paras = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 6)))
                     for _ in range(rng.choice((1, 1, 2, 3, 5)))]
            line = json.dumps({"prompt": prompt, "response": "\n\n".join(paras)}, ensure_ascii=ensure_ascii)
            buf.append(line)
            n += 1
            if len(buf) == 2000:
                data = ("\n".join(buf) + "\n").encode()
                f.write(data)
                written += len(data)
                buf.clear()
        if buf:
            f.write(("\n".join(buf) + "\n").encode())
    return n


_CHILD = r"""
import json, resource, sys, time, tempfile, os
sys.path.insert(0, {root!r})
path, mode = {path!r}, {mode!r}
if mode != "json":  # imported before the clock starts, as json is: steady-state throughput only
    from app.datasets.validation import validate_and_convert
    from app.datasets import parallel
t0 = time.perf_counter()
c0 = time.process_time()
worker_rss = 0
if mode == "json":
    n = 0
    with open(path, "rb") as f:
        for line in f:
            json.loads(line)
            n += 1
else:
    workers = 2 if mode == "ours" else 1  # 2: the opt-in parallel path
    with open(path, "rb") as f, tempfile.TemporaryFile(dir=os.path.dirname(path)) as out:
        r = validate_and_convert(f, out, filename=os.path.basename(path), workers=workers)
    n = r.valid_examples
    worker_rss = parallel.worker_peak_rss_kib
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
# VmHWM is this process's own peak; ru_maxrss also counts the parent's pages at fork time.
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")]
rss = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": dt, "cpu_seconds": cpu, "records": n, "rss_mib": rss / 1024,
                  "worker_rss_mib": worker_rss / 1024,
                  "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run_child(path: Path, mode: str) -> dict[str, float]:
    code = _CHILD.format(root=str(ROOT), path=str(path), mode=mode)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def bench_parse(path: Path, runs: int) -> None:
    size = path.stat().st_size
    modes = ("json", "ours_1proc", "ours")
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(runs):  # interleaved, so all paths see the same machine state
        for mode in modes:
            results[mode].append(run_child(path, mode))
    rows = {}
    for mode, rs in results.items():
        wall = statistics.median(size / MB / r["seconds"] for r in rs)
        cpu = statistics.median(size / MB / r["cpu_seconds"] for r in rs)
        rows[mode] = (wall, cpu, max(r["rss_mib"] for r in rs), max(r["worker_rss_mib"] for r in rs))
    print(f"\nfile: {path} ({size / MB:,.0f} MB, {int(results['ours'][0]['records']):,} records), "
          f"{runs} runs each, medians")
    print(f"{'path':<40}{'MB/s wall':>10}{'main CPU':>10}{'peak RSS MiB':>14}{'+ per worker':>14}")
    names = {"json": "for line in f: json.loads(line)", "ours": "validate_and_convert (workers=2)",
             "ours_1proc": "validate_and_convert (workers=1)"}
    for mode, (wall, cpu, rss, wrss) in rows.items():
        print(f"{names[mode]:<40}{wall:>10.1f}{cpu:>10.1f}{rss:>14.1f}{wrss:>14.1f}")
    for mode in modes[1:]:
        print(f"ratio {names[mode]} / json.loads: {rows[mode][0] / rows['json'][0]:.2f}x (wall clock)")
    print("(main CPU: MB per CPU-second of the measured process alone; workers' CPU not included)")


def bench_tokens(path: Path, runs: int, sample_size: int) -> None:
    import orjson

    from app.datasets.tokens import render_texts, sample_lines, token_stats
    from app.training.tiny_model import _build_tokenizer

    tok = _build_tokenizer()
    with tempfile.TemporaryDirectory(dir=path.parent) as d:
        canon = Path(d) / "canonical.jsonl"
        from app.datasets.validation import validate_and_convert

        with path.open("rb") as f, canon.open("wb") as out:
            validate_and_convert(f, out, filename=path.name)
        size = canon.stat().st_size
        ours, base, stats = [], [], {}
        for _ in range(runs):
            with canon.open("rb") as f:
                t0 = time.perf_counter()
                stats = token_stats(f, tok, 512, file_size=size, sample_size=sample_size)
                ours.append(time.perf_counter() - t0)
            # The baseline: the same sampled records, rendered beforehand, in one batched call.
            with canon.open("rb") as f:
                lines, _, _ = sample_lines(f, size, 50 * 2**20, sample_size)
                records = [orjson.loads(line) for line in lines]
            texts = render_texts(records, tok)
            t0 = time.perf_counter()
            ids = tok(texts, add_special_tokens=False)["input_ids"]
            base.append(time.perf_counter() - t0)
            n_tokens = sum(len(x) for x in ids)
        ours_tps = stats["sample_tokens"] / statistics.median(ours)
        base_tps = n_tokens / statistics.median(base)
        print(f"\ntoken_stats on the canonical file ({size / MB:,.0f} MB, sampled={stats['sampled']}, "
              f"sample_size={stats['sample_size']:,}, mean={stats['mean']:.1f} "
              f"± {100 * (stats.get('mean_stderr') or 0):.2f}% rel. s.e.), {runs} runs, medians")
        print(f"{'token_stats (read, sample, render, tokenize)':<48}{ours_tps / 1e6:>8.3f} M tokens/s")
        print(f"{'one batched tokenizer(texts) call':<48}{base_tps / 1e6:>8.3f} M tokens/s")
        print(f"ratio token_stats / batched pass: {ours_tps / base_tps:.2f}x "
              f"(same {len(texts):,} texts, {n_tokens:,} tokens; bos counted by token_stats: "
              f"{stats['sample_tokens'] - n_tokens:,})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", type=Path, help="a JSONL file to measure (default: generate one)")
    ap.add_argument("--size-mb", type=int, default=200, help="size of the generated file")
    ap.add_argument("--raw-utf8", action="store_true", help="write non-ASCII text unescaped")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sample-size", type=int, default=20_000, help="token_stats sample size")
    ap.add_argument("--skip-tokens", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    with tempfile.TemporaryDirectory() as d:
        path = args.file
        if path is None:
            path = Path(d) / "bench.jsonl"
            t0 = time.perf_counter()
            n = generate(path, args.size_mb, ensure_ascii=not args.raw_utf8)
            print(f"generated {n:,} records, {path.stat().st_size / MB:,.0f} MB "
                  f"in {time.perf_counter() - t0:.0f}s")
        bench_parse(path, args.runs)
        if not args.skip_tokens:
            bench_tokens(path, args.runs, args.sample_size)


if __name__ == "__main__":
    main()
