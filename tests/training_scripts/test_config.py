"""One hyperparameter contract: the API's schema is built from training_scripts/config.py, and accepts
exactly the values train.py accepts (same names, same defaults, rejection at the same limits).

train.py also takes what the platform sets (base_model, base_model_name, resume_from_checkpoint) and
ignores names it does not know; the API rejects both, as users set neither.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from app.training.schemas import Hyperparameters, contract

API_PARAMS = [p for p in contract.PARAMS if p.api]
NOT_NUMBERS = [None, "x", True, False, [], {}, "3", math.inf, -math.inf, math.nan]


def api(name: str, value: Any) -> tuple[bool, Any]:
    try:
        return True, getattr(Hyperparameters(**{name: value}), name)
    except ValidationError as exc:
        assert exc.errors()[0]["loc"][:1] in ((name,), ()), exc.errors()
        return False, None


def train(name: str, value: Any) -> tuple[bool, Any]:
    try:
        cfg, _ = contract.parse({"base_model": "org/model", name: value})
    except contract.ConfigError as exc:
        assert all(p.startswith(name) or p.startswith("fp16/bf16") for p in exc.problems), exc.problems
        return False, None
    return True, getattr(cfg, name)


def probes(p: Any) -> list[Any]:
    if p.kind in ("int", "float"):
        step = (lambda b, d: b + d) if p.kind == "int" else (lambda b, d: math.nextafter(b, b + d))
        bounds = [b for b in (p.ge, p.gt, p.le, p.lt) if b is not None]
        near = [step(b, d) for b in bounds for d in (-1, 1)] + bounds + [p.default, 0, -1, 10**9, 2.5, 3.0]
        return near + NOT_NUMBERS
    if p.kind == "bool":
        return [True, False, "true", "false", "yes", "no", 1, 0, "maybe", None, "null", [], 2.5]
    if p.kind == "choice":
        return [*p.choices, "wild", 1, None, ""]
    return [["q_proj"], ["all-linear"], [], ["a"] * contract.MAX_TARGET_MODULES,
            ["a"] * (contract.MAX_TARGET_MODULES + 1), "q_proj", ["q", 1], [""], None]


def test_same_names() -> None:
    assert set(Hyperparameters.model_fields) == {p.name for p in API_PARAMS}
    assert {p.name for p in contract.PARAMS} >= {"base_model", "base_model_name", "resume_from_checkpoint"}


def test_same_defaults() -> None:
    cfg, _ = contract.parse({"base_model": "org/model"})
    assert Hyperparameters().model_dump() == {p.name: getattr(cfg, p.name) for p in API_PARAMS}
    full, _ = contract.parse({"base_model": "org/model", "use_lora": False})
    assert Hyperparameters(use_lora=False).learning_rate == full.learning_rate == contract.FULL_LEARNING_RATE


@pytest.mark.parametrize("param", API_PARAMS, ids=lambda p: p.name)
def test_api_accepts_exactly_what_train_accepts(param: Any) -> None:
    for value in probes(param):
        ours, theirs = api(param.name, value), train(param.name, value)
        assert ours[0] == theirs[0], f"{param.name}={value!r}: API {ours}, train.py {theirs}"
        if ours[0] and not (param.name == "learning_rate" and value is None):
            assert ours[1] == theirs[1] and type(ours[1]) is type(theirs[1]), (param.name, value, ours, theirs)


def test_limits_from_the_issue() -> None:
    """epochs and batch_size take the API's stricter ranges; max_steps has an upper bound."""
    for name, top in (("epochs", 100), ("batch_size", 512), ("max_steps", 100_000)):
        assert train(name, top)[0] and api(name, top)[0]
        assert not train(name, top + 1)[0] and not api(name, top + 1)[0]
    assert not train("epochs", 1.5)[0] and not api("epochs", 1.5)[0]


@pytest.mark.parametrize("values", [{"fp16": True, "bf16": True}, {"load_in_4bit": True, "use_lora": False},
                                    {"eval_steps": 3, "save_steps": 4}])
def test_same_cross_field_rules(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Hyperparameters(**values)
    with pytest.raises(contract.ConfigError):
        contract.parse({"base_model": "org/model", **values})
    fixed = {**values, "save_steps": 6} if "save_steps" in values else None
    if fixed:
        Hyperparameters(**fixed)
        contract.parse({"base_model": "org/model", **fixed})
