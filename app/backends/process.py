"""Child processes that outlive an API restart: started in their own session, their exit code
written to a file by a small shell wrapper, found again later by pid and start time."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "training_scripts"

_children: dict[int, subprocess.Popen[bytes]] = {}


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def spawn(args: list[str], workdir: Path, env: dict[str, str], log_name: str) -> dict[str, Any]:
    """Start `python args...` with stdout/stderr in workdir; returns a handle (pid, start time, paths)."""
    workdir.mkdir(parents=True, exist_ok=True)
    exit_file = workdir / f"{log_name}.exit_code"
    exit_file.unlink(missing_ok=True)
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, *args])
    wrapper = f"{cmd} >>{shlex.quote(str(workdir / (log_name + '.stdout')))} " \
              f"2>>{shlex.quote(str(workdir / (log_name + '.stderr')))}; " \
              f"echo $? > {shlex.quote(str(exit_file))}.tmp && mv {shlex.quote(str(exit_file))}.tmp " \
              f"{shlex.quote(str(exit_file))}"
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(["/bin/sh", "-c", wrapper], cwd=workdir, env=full_env, start_new_session=True,
                            stdin=subprocess.DEVNULL)
    _children[proc.pid] = proc
    return {"pid": proc.pid, "start_time": _start_time(proc.pid), "dir": str(workdir), "log": log_name}


def alive(handle: dict[str, Any]) -> bool:
    pid = handle.get("pid")
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None and child.poll() is not None:  # reap our own children
        _children.pop(pid, None)
        return False
    st = _start_time(pid)
    if st is None or (handle.get("start_time") and st != handle["start_time"]):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def exit_code(handle: dict[str, Any]) -> int | None:
    f = Path(handle["dir"]) / f"{handle['log']}.exit_code"
    try:
        return int(f.read_text().strip())
    except (OSError, ValueError):
        return None


def exit_time(handle: dict[str, Any]) -> float | None:
    """When the process exited (its wrapper wrote the exit code then), also seen after an API restart."""
    try:
        return (Path(handle["dir"]) / f"{handle['log']}.exit_code").stat().st_mtime
    except OSError:
        return None


def terminate(handle: dict[str, Any], sig: int = signal.SIGTERM) -> None:
    if not alive(handle):
        return
    try:
        os.killpg(handle["pid"], sig)
    except ProcessLookupError:
        pass


def log_path(handle: dict[str, Any], stream: str = "stdout") -> Path:
    return Path(handle["dir"]) / f"{handle['log']}.{stream}"


def read_new_lines(handle: dict[str, Any], offset: int, stream: str = "stdout") -> tuple[list[str], int]:
    """Complete lines appended to a log since `offset` (bytes), and the new offset."""
    p = log_path(handle, stream)
    try:
        with open(p, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    lines = data[: end + 1].decode("utf-8", "replace").splitlines()
    return lines, offset + end + 1


def tail(handle: dict[str, Any], stream: str = "stderr", max_bytes: int = 4000) -> str:
    p = log_path(handle, stream)
    try:
        with open(p, "rb") as f:
            f.seek(max(0, p.stat().st_size - max_bytes))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
