"""training_scripts/cpu_kernels.py: the compiled CPU kernels' library, built and loaded as mkl_dispatch's is."""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "training_scripts"
sys.path.insert(0, str(SCRIPTS))
import cpu_kernels  # noqa: E402
import mkl_dispatch  # noqa: E402

BUILDABLE = cpu_kernels.applies({}) is None and (shutil.which("cc") or shutil.which("gcc")) is not None


def test_the_switch_and_the_platform_decide_whether_it_applies() -> None:
    for off in ("0", "false", "off"):
        assert cpu_kernels.applies({cpu_kernels.ENV_SWITCH: off}) == f"{cpu_kernels.ENV_SWITCH}={off}"
    if sys.platform.startswith("linux") and os.uname().machine == "x86_64":
        assert cpu_kernels.applies({}) is None


def test_without_a_compiler_it_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mkl_dispatch.shutil, "which", lambda name: None)
    assert cpu_kernels.build(tmp_path / cpu_kernels.LIBRARY) == "no C compiler (cc) to build the library"
    assert not (tmp_path / cpu_kernels.LIBRARY).exists()


@pytest.mark.skipif(not BUILDABLE, reason="needs Linux x86-64 and a C compiler")
def test_the_image_build_writes_a_library_only_its_owner_can_replace(tmp_path: Path) -> None:
    target = tmp_path / "lib" / "llmtuner"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "cpu_kernels.py"), "--build", str(target)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lib = target / cpu_kernels.LIBRARY
    assert proc.stdout.strip() == str(lib)
    for p in (target, lib):
        assert stat.S_IMODE(p.stat().st_mode) == 0o755
    assert mkl_dispatch.safe_to_load(lib)
    loaded = ctypes.CDLL(str(lib))
    assert loaded.llmtuner_swiglu_forward and loaded.llmtuner_swiglu_backward


@pytest.mark.skipif(not BUILDABLE, reason="needs Linux x86-64 and a C compiler")
def test_a_failed_build_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kernels, "SOURCE", "this is not C\n")
    why = cpu_kernels.build(tmp_path / cpu_kernels.LIBRARY)
    assert why and why.startswith("building the library failed")
    assert not list(tmp_path.iterdir()), "the source is removed either way"


@pytest.mark.skipif(not BUILDABLE, reason="needs Linux x86-64 and a C compiler")
def test_library_is_loaded_once_with_its_argument_types() -> None:
    lib = cpu_kernels.library()
    assert lib is not None and cpu_kernels.why_not() is None
    assert cpu_kernels.library() is lib
    assert lib.llmtuner_swiglu_backward.argtypes[-1] is ctypes.c_int64
