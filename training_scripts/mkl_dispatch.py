"""MKL's code path for the instruction set on AMD CPUs (AVX-512 on Zen 4, AVX2 on Zen 3), for fp32 training.

torch's CPU wheel links Intel's oneMKL, and oneMKL picks its code path by asking
`mkl_serv_intel_cpu_true()` whether the CPU is an Intel one before it looks at the instruction
set: on an AMD CPU it answers 0, and MKL runs its generic ("def") kernels, which are slower than
the ones it has for the CPU's instruction set (AVX-512 or AVX2). torch's fp32 GEMMs (`mm`, `bmm`,
`addmm`: attention, LoRA) are MKL's, so an fp32 training step on a Zen 4 EPYC ran them at about
half the machine's speed.

`load()` compiles a one-line shared library that defines `mkl_serv_intel_cpu_true` to return 1
and loads it with RTLD_GLOBAL *before torch is imported*: libtorch_cpu.so exports MKL's symbols
and binds its own calls to them through the dynamic linker, which then finds this definition
first, as it would with LD_PRELOAD (the well-known workaround since MKL 2020 dropped
MKL_DEBUG_CPU_TYPE). MKL then dispatches on the instruction set, as oneDNN always does (code path
7, `mkl_blas_avx512_sgemm_*` in a profile, on Zen 4; 5, AVX2, on Zen 3). The results stay IEEE fp32.
Measured on a Zen 4 EPYC, one thread: attention's batched GEMMs 45-58 -> 89-96 GFLOP/s, the
linear layers' 61-78 -> 87-105; the fp32 training bench 1.13x the previous tree in the same run
(train.py then leaves its linear layers to MKL instead of oneDNN, see
`speedups.onednn_linear_preferred`). On a Zen 3 EPYC (AVX2, no AVX-512), one thread: the frozen
linear layers' GEMMs 1.10-1.15x the generic kernels' (each against oneDNN in the same process);
train.py's fp32 steps 1.09x
(three alternating pairs, 4 steps each: 830-844 against 759-776 tokens/s).

Only for AMD CPUs with AVX-512 (F, BW, DQ and VL: what MKL's AVX-512 kernels need) or AVX2 and FMA
on Linux x86-64. `LLMTUNER_MKL_AMD=0` turns it off. It loads the library the Docker image builds
at `PREBUILT` (`python mkl_dispatch.py --build DIR`, in the image's root-owned environment) where
that exists and only its owner or root can write it; otherwise it needs a C compiler (`cc`) when
the process starts, and builds the library in a fresh private directory, removed once loaded
(nothing is cached where another user could replace it). Without either, or once torch is
imported, nothing changes and `load()` says why.

This module imports nothing heavy: train.py, evaluate.py and serve.py call `load()` before
anything imports torch (the speed-up was measured for training only).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ENV_SWITCH = "LLMTUNER_MKL_AMD"
SOURCE = "int mkl_serv_intel_cpu_true(void) { return 1; }\n"
LIBRARY = "libmkl_intel_cpu_true.so"
PREBUILT = Path(sys.prefix) / "lib" / "llmtuner" / LIBRARY  # where the Docker image puts it
AVX512_FLAGS = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl"})
AVX2_FLAGS = frozenset({"avx2", "fma"})  # what MKL's AVX2 kernels need
_loaded: list[str] = []  # the library's path once loaded in this process
_why_not = ["load() was not called"]  # why the last load() changed nothing; empty once loaded


@functools.cache
def cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ("vendor_id", "flags", ...); empty where unreadable."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def applies(info: dict[str, str] | None = None, env: dict[str, str] | None = None) -> str | None:
    """None when this process should load the library; otherwise why not."""
    env = os.environ if env is None else env
    info = cpuinfo() if info is None else info
    if env.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{ENV_SWITCH}={env[ENV_SWITCH]}"
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return "not Linux on x86-64"
    if info.get("vendor_id") != "AuthenticAMD":
        return "not an AMD CPU (MKL picks its own code path on Intel CPUs)"
    flags = set(info.get("flags", "").split())
    if not (AVX512_FLAGS <= flags or AVX2_FLAGS <= flags):
        return "this AMD CPU has neither AVX-512 nor AVX2 with FMA"
    return None


def load(info: dict[str, str] | None = None) -> str | None:
    """Make MKL use its kernels for this AMD CPU's instruction set (see the module docstring); None when done
    (or already done in this process), otherwise why nothing changed. Call before importing torch.
    `info`: /proc/cpuinfo's fields as `cpuinfo()` reads them (tests pass another CPU's)."""
    why = None if _loaded else _load(info)
    _why_not[:] = [why] if why else []
    return why


def why_not() -> str | None:
    """Why MKL keeps its generic kernels in this process (None once `load()` loaded the library)."""
    return _why_not[0] if _why_not else None


def missed() -> str | None:
    """Why the library is not loaded on a CPU it applies to (an AMD CPU with AVX-512 or AVX2): worth
    a log line. None when it is loaded or does not apply (Intel, neither instruction set, switched off)."""
    why = why_not()
    return why if why and applies() is None else None


def missed_message() -> str | None:
    """The log line train.py, evaluate.py and serve.py write when `missed()` says why; None otherwise."""
    why = missed()
    return f"MKL keeps its generic kernels on this AMD CPU: {why}" if why else None


def _load(info: dict[str, str] | None) -> str | None:
    why = applies(info)
    if why:
        return why
    if "torch" in sys.modules:
        return "torch was imported first (MKL's code path is bound when torch loads)"
    if safe_to_load(PREBUILT):
        return _open(PREBUILT)
    with tempfile.TemporaryDirectory(prefix="llmtuner-mkl-") as tmp:  # mode 0700, removed after loading
        lib = Path(tmp) / LIBRARY
        why = build(lib)
        return why or _open(lib)  # once mapped, the file may go


def build(lib: Path, source: str = SOURCE, flags: tuple[str, ...] = ("-O2",), libs: tuple[str, ...] = ()) -> str | None:
    """Compile `source` (this module's library unless given: cpu_kernels.py builds its own here too) to
    the shared library `lib`; None when done, otherwise why not."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "no C compiler (cc) to build the library"
    src = lib.with_suffix(".c")
    src.write_text(source)
    try:
        proc = subprocess.run([compiler, "-shared", "-fPIC", *flags, "-o", str(lib), str(src), *libs],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"building the library failed: {exc}"
    finally:
        src.unlink(missing_ok=True)
    return f"building the library failed: {proc.stderr.strip()[-300:]}" if proc.returncode else None


def safe_to_load(path: Path) -> bool:
    """`path` exists and neither it nor its directory can be written by anyone but its owner, who is
    root or this user (a library anyone else could replace would run their code in this process)."""
    try:
        for p in (path, path.parent):
            st = p.stat()
            if st.st_uid not in (0, os.getuid()) or st.st_mode & 0o022:
                return False
    except OSError:
        return False
    return path.is_file()


def _open(lib: Path) -> str | None:
    try:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        return f"loading the library failed: {exc}"
    _loaded.append(str(lib))
    return None


def active() -> bool:
    """Whether `load()` loaded the library in this process."""
    return bool(_loaded)


def mkl_code_path() -> int | None:
    """MKL's own code-path number (`mkl_serv_cpu_detect()` of torch's MKL: on an AMD CPU 0, its
    generic kernels, until `load()` ran, then 7, AVX-512, on a Zen 4 and 5, AVX2, on a Zen 3); None
    where torch has no MKL or does not export it. Imports torch."""
    import torch

    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        detect = ctypes.CDLL(str(lib)).mkl_serv_cpu_detect
    except (OSError, AttributeError):
        return None
    detect.restype = ctypes.c_int
    return int(detect())


def build_cli(build_to: Callable[[Path], str | None], library: str, argv: list[str] | None = None) -> None:
    """`python MODULE.py --build DIR`, the Docker image's build of a library: writes DIR/`library` with
    `build_to`, writable by its owner only (see `safe_to_load`), and prints its path; exits with why on failure."""
    import argparse

    parser = argparse.ArgumentParser(description=f"build {library}")
    parser.add_argument("--build", type=Path, required=True, metavar="DIR", help=f"writes DIR/{library}")
    target = parser.parse_args(argv).build
    target.mkdir(parents=True, exist_ok=True)
    failure = build_to(target / library)
    if failure:
        sys.exit(failure)
    for built in (target, target / library):
        built.chmod(0o755)  # writable by its owner only, whatever the umask
    print(target / library)


if __name__ == "__main__":  # the Docker image's build: python mkl_dispatch.py --build DIR
    build_cli(build, LIBRARY)
