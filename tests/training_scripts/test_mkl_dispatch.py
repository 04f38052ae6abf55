"""training_scripts/mkl_dispatch.py: MKL's Intel code paths (AVX-512, AVX2) on AMD CPUs, loaded before torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "training_scripts"
sys.path.insert(0, str(SCRIPTS))
import mkl_dispatch  # noqa: E402

ZEN4 = {"vendor_id": "AuthenticAMD", "flags": "fpu sse2 avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16"}
ZEN3 = {"vendor_id": "AuthenticAMD", "flags": "fpu sse2 avx2 fma"}
SAPPHIRE_RAPIDS = {"vendor_id": "GenuineIntel", "flags": ZEN4["flags"] + " amx_bf16"}
ON_X86_LINUX = mkl_dispatch.applies(ZEN4, {}) is None


@pytest.mark.skipif(not ON_X86_LINUX, reason="Linux x86-64 only")
def test_applies_to_amd_cpus_with_avx512_or_avx2() -> None:
    assert mkl_dispatch.applies(ZEN4, {}) is None
    assert mkl_dispatch.applies(ZEN4, {mkl_dispatch.ENV_SWITCH: "1"}) is None
    assert mkl_dispatch.applies(ZEN3, {}) is None  # MKL's AVX2 kernels instead of its generic ones
    assert "not an AMD CPU" in (mkl_dispatch.applies(SAPPHIRE_RAPIDS, {}) or "")
    # MKL's AVX-512 kernels need VL, its AVX2 ones FMA: this CPU has neither path
    no_vl_no_fma = {"vendor_id": "AuthenticAMD", "flags": "avx2 avx512f avx512dq avx512bw"}
    assert "neither" in (mkl_dispatch.applies(no_vl_no_fma, {}) or "")
    assert "neither" in (mkl_dispatch.applies({"vendor_id": "AuthenticAMD", "flags": "sse2 avx"}, {}) or "")
    for off in ("0", "false", "off"):
        assert mkl_dispatch.applies(ZEN4, {mkl_dispatch.ENV_SWITCH: off}) == f"{mkl_dispatch.ENV_SWITCH}={off}"


def test_load_changes_nothing_once_torch_is_imported() -> None:
    pytest.importorskip("torch")
    why = mkl_dispatch.load(ZEN4)
    assert why is not None and not mkl_dispatch.active() and mkl_dispatch.why_not() == why
    assert "torch was imported first" in why or not ON_X86_LINUX


def run_python(code: str, **env: str | None) -> Any:
    """Runs `code` in a fresh interpreter (`env` overrides this one's environment; None unsets a
    variable) and returns its last line of output, parsed as JSON."""
    full = {k: v for k, v in (os.environ | {"PYTHONPATH": str(SCRIPTS)} | env).items() if v is not None}
    proc = subprocess.run([sys.executable, "-c", code], cwd=SCRIPTS, capture_output=True, text=True, timeout=120,
                          env=full)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


PROBE = """
import json, sys, mkl_dispatch
from pathlib import Path
from typing import Any
mkl_dispatch.PREBUILT = Path({prebuilt!r})
why = mkl_dispatch.load({info})
import torch
torch.manual_seed(0)
a, b = torch.randn(300, 200), torch.randn(200, 100)
q, k = torch.randn(8, 64, 64), torch.randn(8, 64, 100)
err = max(float((a @ b - (a.double() @ b.double()).float()).abs().max()),
          float((torch.bmm(q, k) - torch.bmm(q.double(), k.double()).float()).abs().max()))
assert mkl_dispatch.why_not() == why
print(json.dumps({{"why": why, "active": mkl_dispatch.active(), "code": mkl_dispatch.mkl_code_path(), "err": err}}))
"""


def probe(info: dict[str, str] | None, prebuilt: Path = Path("/nonexistent") / mkl_dispatch.LIBRARY) -> str:
    return PROBE.format(info=repr(info), prebuilt=str(prebuilt))


@pytest.mark.skipif(not ON_X86_LINUX or not (shutil.which("cc") or shutil.which("gcc")),
                    reason="needs Linux x86-64 and a C compiler")
def test_load_makes_mkl_take_its_intel_code_path() -> None:
    pytest.importorskip("torch")
    loaded = run_python(probe(ZEN4))
    off = run_python(probe(None), **{mkl_dispatch.ENV_SWITCH: "0"})
    assert loaded["why"] is None and loaded["active"] is True
    assert off["why"] == f"{mkl_dispatch.ENV_SWITCH}=0" and off["active"] is False
    assert loaded["err"] < 1e-3 and off["err"] < 1e-3  # fp32 GEMMs stay right whichever kernels run
    if loaded["code"] is None:
        pytest.skip("this torch's MKL does not export mkl_serv_cpu_detect")
    assert loaded["code"] >= off["code"]
    if mkl_dispatch.applies() is None:  # this machine is an AMD CPU with AVX-512 or AVX2: MKL changed its path
        assert loaded["code"] > off["code"], (loaded, off)


@pytest.mark.skipif(not ON_X86_LINUX, reason="Linux x86-64 only")
def test_load_without_a_compiler_says_so() -> None:
    pytest.importorskip("torch")
    got = run_python(probe(ZEN4), PATH="/nonexistent")
    assert got["why"] == "no C compiler (cc) to build the library" and got["active"] is False


@pytest.mark.skipif(not ON_X86_LINUX or not (shutil.which("cc") or shutil.which("gcc")),
                    reason="needs Linux x86-64 and a C compiler")
def test_a_prebuilt_library_loads_without_a_compiler_unless_others_can_write_it(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    built = tmp_path / "lib" / "llmtuner"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "mkl_dispatch.py"), "--build", str(built)],
                          capture_output=True, text=True, timeout=120)  # as the Dockerfile's builder runs it
    assert proc.returncode == 0, proc.stderr
    lib = built / mkl_dispatch.LIBRARY
    assert proc.stdout.strip() == str(lib) and lib.is_file() and not list(built.glob("*.c"))
    got = run_python(probe(ZEN4, lib), PATH="/nonexistent")
    assert got["why"] is None and got["active"] is True and got["err"] < 1e-3
    lib.chmod(0o666)  # anyone could replace it: not loaded, and with no compiler nothing changes
    got = run_python(probe(ZEN4, lib), PATH="/nonexistent")
    assert got["why"] == "no C compiler (cc) to build the library" and got["active"] is False


LOAD_ORDER = """
import json, os, sys, mkl_dispatch
seen, thp = [], []
load = mkl_dispatch.load
mkl_dispatch.load = lambda *a, **k: seen.append("torch" in sys.modules) or thp.append(
    os.environ.get("THP_MEM_ALLOC_ENABLE")) or load(*a, **k)
import {module}
try:
    code = {module}.main({args})
except SystemExit as e:
    code = e.code
sys.stdout = sys.__stdout__
print(json.dumps({{"torch_before_load": seen, "thp": thp, "code": code}}))
"""


@pytest.mark.parametrize(("module", "args"), [
    ("train", ""),  # no data: it fails at once, after load()
    ("evaluate", ""),
    ("serve", "['--model-dir', '/nonexistent/model.tar.gz', '--port', '0']"),  # the model fails to load
])
def test_the_scripts_load_the_library_before_torch(module: str, args: str, tmp_path: Path) -> None:
    got = run_python(LOAD_ORDER.format(module=module, args=args), SM_CHANNEL_TRAIN=str(tmp_path / "none"),
                     SM_MODEL_DIR=str(tmp_path / "model"), SM_OUTPUT_DIR=str(tmp_path / "out"),
                     SM_HPS=json.dumps({"base_model": "tiny"}), THP_MEM_ALLOC_ENABLE=None)
    assert got["torch_before_load"] == [False]  # called once, with torch not imported yet
    assert got["code"] != 0
    # train.py turns on torch's transparent huge pages before torch reads the switch (at its first allocation)
    assert got["thp"] == (["1"] if module == "train" else [None])


def _thp_mode() -> str | None:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else None


@pytest.mark.skipif(_thp_mode() != "madvise" or not Path("/proc/self/smaps_rollup").exists(),
                    reason="needs Linux with transparent huge pages on request (madvise): under 'always' every "
                           "process gets them, under 'never' none does")
def test_torch_backs_large_tensors_with_huge_pages_when_train_py_asks() -> None:
    """THP_MEM_ALLOC_ENABLE=1 (what train.py sets) makes torch's CPU allocator madvise its blocks of
    2 MiB and more MADV_HUGEPAGE: the process then holds anonymous huge pages. A torch that dropped
    the switch would fail here."""
    pytest.importorskip("torch")
    code = ("import re, torch\n"
            "t = [torch.ones(64 << 20, dtype=torch.uint8) for _ in range(8)]\n"
            "s = open('/proc/self/smaps_rollup').read()\n"
            "print(int(re.search(r'AnonHugePages:\\s+(\\d+) kB', s).group(1)))")
    on = run_python(code, THP_MEM_ALLOC_ENABLE="1")
    assert on >= 2048  # kB: at least one 2 MiB page
    off = run_python(code, THP_MEM_ALLOC_ENABLE=None)  # without the switch nothing asks for them
    assert off < on


def test_missed_names_a_failure_only_on_a_cpu_the_library_applies_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mkl_dispatch, "_why_not", ["no C compiler (cc) to build the library"])
    monkeypatch.setattr(mkl_dispatch, "applies", lambda *a: None)  # an AMD CPU with AVX-512 or AVX2
    assert mkl_dispatch.missed() == "no C compiler (cc) to build the library"
    assert mkl_dispatch.missed_message() == ("MKL keeps its generic kernels on this AMD CPU: "
                                             "no C compiler (cc) to build the library")
    monkeypatch.setattr(mkl_dispatch, "applies", lambda *a: "not an AMD CPU")
    assert mkl_dispatch.missed() is None  # nothing to report on an Intel CPU
    assert mkl_dispatch.missed_message() is None
    monkeypatch.setattr(mkl_dispatch, "_why_not", [])  # loaded
    monkeypatch.setattr(mkl_dispatch, "applies", lambda *a: None)
    assert mkl_dispatch.missed() is None
    assert mkl_dispatch.missed_message() is None
