"""Benchmark the dataset pipeline: validate+convert vs a bare json.loads loop, token stats vs one batched pass.

    .venv/bin/python bench/dataset_pipeline.py                  # generates a 200 MB JSONL in a temp dir
    .venv/bin/python bench/dataset_pipeline.py --file my.jsonl  # or measures your file
    .venv/bin/python bench/dataset_pipeline.py --size-mb 1024 --runs 3

Each parsing path runs in its own child process so that its peak RSS is its own; the
multi-process path (app/datasets/parallel.py) is measured with all its processes (CPU and
memory of the parent, the forkserver and the workers); MB/s are medians of --runs runs.
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
import json, os, sys, time, tempfile, threading
sys.path.insert(0, {root!r})
path, mode, sample_pss, workers = {path!r}, {mode!r}, {sample_pss!r}, {workers!r}


def status(pid, key):
    try:
        with open(f"/proc/{{pid}}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(key))
    except (OSError, StopIteration):
        return 0


def cpu_of(pid):  # utime + stime of another process, seconds
    try:
        with open(f"/proc/{{pid}}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def tree():  # this process, the forkserver and its children (the workers)
    from multiprocessing import forkserver
    fs = forkserver._forkserver._forkserver_pid
    pids = [os.getpid()] + ([fs] if fs else [])
    if fs:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{{d}}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == fs:
                            pids.append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
    return pids


def pss_kib(pid):
    try:
        with open(f"/proc/{{pid}}/smaps_rollup") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


peak_pss = [0]
def sampler(stop):
    while not stop.wait(0.005):
        peak_pss[0] = max(peak_pss[0], sum(map(pss_kib, tree())))


if mode != "json":  # imported before the clock starts, as json is: steady-state throughput only
    from app.datasets.validation import validate_and_convert
    from app.datasets import parallel
    workers = 1 if mode == "ours_1proc" else workers
    if mode == "ours":  # as the app does at start-up, long before the upload comes
        parallel.warm_up()
        time.sleep(1.0)
fs_cpu0 = 0.0
if mode != "json":
    from multiprocessing import forkserver
    fs_cpu0 = cpu_of(forkserver._forkserver._forkserver_pid) if forkserver._forkserver._forkserver_pid else 0.0
stop = threading.Event()
if sample_pss:
    threading.Thread(target=sampler, args=(stop,), daemon=True).start()
t0 = time.perf_counter()
c0 = time.process_time()
if mode == "json":
    n = 0
    with open(path, "rb") as f:
        for line in f:
            json.loads(line)
            n += 1
else:
    with open(path, "rb") as f, tempfile.TemporaryFile(dir=os.path.dirname(path)) as out:
        r = validate_and_convert(f, out, filename=os.path.basename(path), workers=workers)
    n = r.valid_examples
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
stop.set()
own = status("self", "VmHWM")  # this process's own peak (ru_maxrss would add the parent's pages at fork)
total, fs_rss = own, 0
if mode not in ("json", "ours_1proc"):
    from multiprocessing import forkserver
    fs = forkserver._forkserver._forkserver_pid
    fs_rss = status(fs, "VmHWM") if fs else 0
    cpu += sum(c for _, c in parallel.last_run_workers.values()) + (cpu_of(fs) - fs_cpu0 if fs else 0.0)
    total += fs_rss + sum(h for h, _ in parallel.last_run_workers.values())
print(json.dumps({{"seconds": dt, "cpu_seconds": cpu, "records": n, "rss_mib": own / 1024,
                  "total_rss_mib": total / 1024, "pss_mib": peak_pss[0] / 1024,
                  "workers": len(parallel.last_run_workers) if mode not in ("json", "ours_1proc") else 0}}))
"""

MODES = ("json", "ours_1proc", "ours", "ours_cold")
NAMES = {"json": "for line in f: json.loads(line)", "ours_1proc": "validate_and_convert, 1 process",
         "ours": "validate_and_convert, workers", "ours_cold": "  same, first upload (cold forkserver)"}


def run_child(path: Path, mode: str, sample_pss: bool = False) -> dict[str, float]:
    from app.config import Settings  # the app's default (the settings are not imported by the child)

    code = _CHILD.format(root=str(ROOT), path=str(path), mode=mode, sample_pss=sample_pss,
                         workers=Settings().dataset_worker_count)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def bench_parse(path: Path, runs: int) -> None:
    size = path.stat().st_size
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for _ in range(runs):  # interleaved, so all paths see the same machine state
        for mode in MODES:
            results[mode].append(run_child(path, mode))
    # One more run of each path, not timed: the summed PSS of all its processes, sampled every 5 ms
    # (reading /proc/*/smaps_rollup costs CPU, so it is not done in the timed runs).
    pss = {mode: run_child(path, mode, sample_pss=True)["pss_mib"] for mode in MODES}
    print(f"\nfile: {path} ({size / MB:,.0f} MB, {int(results['ours'][0]['records']):,} records), "
          f"{runs} runs each, medians; {int(results['ours'][0]['workers'])} workers on {os.cpu_count()} CPUs")
    print(f"{'path':<40}{'MB/s':>8}{'ratio':>7}{'CPU s':>7}{'RSS MiB':>9}{'all procs':>10}{'PSS all':>9}")
    base = statistics.median(size / MB / r["seconds"] for r in results["json"])
    for mode, rs in results.items():
        wall = statistics.median(size / MB / r["seconds"] for r in rs)
        cpu = statistics.median(r["cpu_seconds"] for r in rs)
        print(f"{NAMES[mode]:<40}{wall:>8.1f}{wall / base:>6.2f}x{cpu:>7.2f}{max(r['rss_mib'] for r in rs):>9.1f}"
              f"{max(r['total_rss_mib'] for r in rs):>10.1f}{pss[mode]:>9.1f}")
    print("ratio: MB/s (wall clock) over the json.loads loop's. CPU s: all the path's processes (parent,\n"
          "workers, forkserver). RSS MiB: the measured process's peak (VmHWM). all procs: the sum of the\n"
          "peaks of the parent, the forkserver and every worker (an upper bound: pages they share are\n"
          "counted in each). PSS all: the peak of their summed PSS (shared pages split), sampled every\n"
          "5 ms in one more run. 'workers': the forkserver was started before the clock, as the app\n"
          "does at start-up (what an upload sees); 'first upload': it starts inside the measured time.")


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
