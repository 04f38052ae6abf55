"""The built-in tiny model built by several threads at once in a fresh process (the API's request
threads and the worker may all ask for it first): each gets the same complete model, none an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SCRIPT = """
import json, sys, threading
results = []
def build(family):
    try:
        from app.training.tiny_model import ensure_tiny_model
        results.append(str(ensure_tiny_model(sys.argv[1], family)))
    except BaseException as e:
        results.append(repr(e))
threads = [threading.Thread(target=build, args=(f,)) for f in ("llama", "llama", "t5", "llama", "t5")]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(sorted(results)))
"""


def test_threads_building_the_tiny_model_at_once(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    llama, t5 = str(tmp_path / "base_models" / "tiny-llama"), str(tmp_path / "base_models" / "tiny-t5")
    assert results == sorted([llama] * 3 + [t5] * 2), results
    for path in (llama, t5):
        assert (Path(path) / "config.json").is_file() and (Path(path) / "tokenizer.json").is_file()
    assert not [p for p in (tmp_path / "base_models").iterdir() if p.name.startswith(".tiny-")]
