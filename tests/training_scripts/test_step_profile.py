"""bench/train_step_profile.py: the per-op timer counts each GEMM's FLOPs from its real shapes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def profile():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("train_step_profile", BENCH / "train_step_profile.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_gemm_shapes_of_each_form(profile) -> None:  # type: ignore[no-untyped-def]
    assert profile.gemm_shape("mm.default", [(6, 5), (5, 7)]) == (1, 6, 5, 7)
    assert profile.gemm_shape("mm.out", [(6, 5), (5, 7), (6, 7)]) == (1, 6, 5, 7)
    assert profile.gemm_shape("addmm_.default", [(6, 7), (6, 5), (5, 7)]) == (1, 6, 5, 7)
    assert profile.gemm_shape("bmm.out", [(3, 6, 5), (3, 5, 7), (3, 6, 7)]) == (3, 6, 5, 7)
    assert profile.gemm_shape("baddbmm_.default", [(3, 6, 7), (3, 6, 5), (3, 5, 7)]) == (3, 6, 5, 7)
    assert profile.gemm_shape("mul.Tensor", [(6, 5), (6, 5)]) is None
    assert profile.gemm_group("addmm_.default", (1, 1320, 16, 512)) == "addmm (min dim <=16)"
    assert profile.gemm_group("bmm.out", (32, 64, 64, 330)) == "bmm (min dim <=64)"
    assert profile.gemm_group("mm.default", (1, 1320, 512, 1408)) == "mm (min dim >64)"


def test_timer_sees_the_real_ops_forward_and_backward(profile) -> None:  # type: ignore[no-untyped-def]
    a = torch.randn(6, 5, requires_grad=True)
    w, q, k = torch.randn(7, 5), torch.randn(3, 70, 32), torch.randn(3, 32, 70)
    timer = profile.op_timer()
    with timer:
        y = (a @ w.t()) * 2  # forward mm + mul; backward: mul, then mm for a's gradient (w frozen)
        y.sum().backward()
        torch.bmm(q, k)
    assert timer.calls["mm (min dim <=16)"] == 2
    assert timer.flops["mm (min dim <=16)"] == 2 * (2 * 6 * 5 * 7)
    assert timer.flops["bmm (min dim <=64)"] == 2 * 3 * 70 * 32 * 70
    assert timer.calls["mul.Tensor"] >= 1 and "mul.Tensor" not in timer.flops
    assert all(s >= 0 for s in timer.seconds.values())
    assert torch.allclose(a.grad, 2 * w.sum(0).expand(6, 5))


def test_timer_sees_the_compiled_kernels_calls(profile) -> None:  # type: ignore[no-untyped-def]
    calls = []
    lib = type("Lib", (), {"llmtuner_swiglu_forward": staticmethod(lambda *a: calls.append(a))})()
    timer = profile.op_timer()
    timed = profile.timed_kernels(lib, timer)
    timed.llmtuner_swiglu_forward(1, 2, 3, 4)
    timed.llmtuner_swiglu_forward(5, 6, 7, 8)
    assert calls == [(1, 2, 3, 4), (5, 6, 7, 8)]  # the real kernel runs, with its arguments
    assert timer.calls["cpu_kernels.swiglu_forward"] == 2 and timer.seconds["cpu_kernels.swiglu_forward"] >= 0
    assert "cpu_kernels.swiglu_forward" not in timer.flops
