"""The cost estimate pinned with worked numbers (app/training/cost.py), and POST /api/cost-estimate."""

from __future__ import annotations

from typing import Any

import pytest

from app.training import cost
from app.training.schemas import Hyperparameters

# 1,000 examples of 200 tokens; a 1B-parameter model on a 100-TFLOPS GPU at 35% MFU (3.5e13 FLOP/s);
# 60 s of start-up; $3.60 an hour (a tenth of a cent a second).
REPORT = {"valid_examples": 1000, "token_stats": {"mean": 200}}
MODEL = {"parameters": 1e9}
GPU = {"name": "gpu", "peak_tflops": 100, "gpus": 1, "startup_seconds": 60}


def est(**hp: Any) -> dict[str, Any]:
    params = {"epochs": 3, "batch_size": 4, "gradient_accumulation_steps": 1, "max_length": 512, **hp}
    return cost.estimate(REPORT, MODEL, Hyperparameters(**params), GPU, 3.6, 0.2)


def test_lora_over_epochs_with_a_validation_split() -> None:
    # 200,000 tokens: 160,000 train, 40,000 validate. LoRA: 4 x 1e9 FLOPs a trained token, 2 x 1e9 a
    # validated one. (3 x 160,000 x 4e9 + 3 x 40,000 x 2e9) / 3.5e13 = 61.7 s; + 60 s = 121 s = $0.121.
    e = est(use_lora=True)
    assert (e["estimated_tokens"], e["estimated_seconds"], e["estimated_cost"]) == (480_000, 121, 0.121)
    assert e["assumptions"]["validation_passes"] == 3


def test_full_fine_tuning_costs_six_flops_a_parameter() -> None:
    # (3 x 160,000 x 6e9 + 3 x 40,000 x 2e9) / 3.5e13 = 89.1 s; + 60 s = 149 s.
    e = est(use_lora=False)
    assert (e["estimated_seconds"], e["estimated_cost"]) == (149, 0.149)


def test_epochs_scale_the_training_term() -> None:
    # (1 x 160,000 x 4e9 + 1 x 40,000 x 2e9) / 3.5e13 = 20.6 s; + 60 s = 80 s.
    e = est(use_lora=True, epochs=1)
    assert (e["estimated_tokens"], e["estimated_seconds"]) == (160_000, 80)


def test_max_steps_bounds_tokens_time_and_cost() -> None:
    # 10 steps x 4 examples x 200 tokens = 8,000 tokens, one validation pass:
    # (8,000 x 4e9 + 40,000 x 2e9) / 3.5e13 = 3.2 s; + 60 s = 63 s.
    e = est(use_lora=True, max_steps=10)
    assert (e["estimated_tokens"], e["estimated_seconds"], e["estimated_cost"]) == (8_000, 63, 0.063)
    assert e["assumptions"]["validation_passes"] == 1
    huge = est(use_lora=True, max_steps=100_000)  # more steps than the epochs hold: the epochs bound it
    assert huge["estimated_tokens"] == 480_000


def test_max_steps_has_an_upper_bound() -> None:
    with pytest.raises(ValueError):
        Hyperparameters(max_steps=10**15)


def test_the_cost_estimate_route(client: Any, dataset: Any) -> None:
    h, ds = dataset
    r = client.post("/api/cost-estimate", headers=h,
                    json={"dataset_id": ds, "hyperparameters": {"epochs": 2, "max_length": 64}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"estimated_tokens", "estimated_seconds", "estimated_cost", "currency", "instance_type",
                         "price_per_hour", "assumptions"}
    a = body["assumptions"]
    assert body["estimated_tokens"] == a["training_tokens_per_epoch"] * 2 and a["epochs"] == 2
    assert body["instance_type"] == "local" and body["estimated_cost"] == 0 and body["currency"] == "USD"
    assert body["estimated_seconds"] >= a["startup_seconds"]
    steps = client.post("/api/cost-estimate", headers=h, json={"dataset_id": ds, "hyperparameters": {
        "epochs": 2, "max_length": 64, "max_steps": 1, "batch_size": 1}}).json()
    assert steps["estimated_tokens"] < body["estimated_tokens"]
    r = client.post("/api/cost-estimate", headers=h, json={"dataset_id": ds, "hyperparameters": {"max_steps": 10**15}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "hyperparameters.max_steps"
