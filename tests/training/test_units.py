from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from app.catalog import base_model, instance_type
from app.training import cost, naming
from app.training.schemas import Hyperparameters
from tests.settings import make_test_settings


class TestNaming:
    def test_seed_shape(self):
        at = datetime(2025, 1, 5, 14, 30, 52, tzinfo=UTC)
        assert naming.job_name("user123", "meta-llama/Llama-2-7b-hf", at) == \
            "llm-tune-user123-llama-2-7b-hf-20250105-143052"

    def test_long_names_are_cut_to_63_and_valid(self):
        at = datetime(2025, 1, 5, 14, 30, 52, tzinfo=UTC)
        name = naming.job_name("a_very_long_user_name_" * 3, "org/" + "model-name-" * 6, at, suffix="12")
        assert len(name) <= 63 and name.endswith("20250105-143052-12") and "--" not in name
        assert name.startswith("llm-tune-a-very-long")


class TestHyperparameters:
    @pytest.mark.parametrize("field,value", [
        ("epochs", 0), ("epochs", 101), ("batch_size", 0), ("learning_rate", 0), ("learning_rate", -1e-4),
        ("warmup_ratio", 0.9), ("gradient_accumulation_steps", 0), ("max_length", 8), ("lora_rank", 0),
        ("lora_dropout", 1.0), ("weight_decay", -0.1), ("max_grad_norm", -1), ("lr_scheduler_type", "wild"),
        ("early_stopping_patience", 0), ("eval_steps", 0), ("save_steps", 0), ("logging_steps", 0),
        ("save_total_limit", 0), ("seed", -1), ("max_steps", 0), ("lora_target_modules", []),
        ("batch_size", "four"), ("nonexistent_knob", 1),
    ])
    def test_bounds(self, field, value):
        with pytest.raises(ValidationError) as e:
            Hyperparameters(**{field: value})
        assert e.value.errors()[0]["loc"][0] == field

    def test_cross_field_rules(self):
        with pytest.raises(ValidationError, match="fp16 and bf16"):
            Hyperparameters(fp16=True, bf16=True)
        with pytest.raises(ValidationError, match="QLoRA"):
            Hyperparameters(load_in_4bit=True, use_lora=False)

    def test_defaults_follow_seed_002(self):
        hp = Hyperparameters()
        assert (hp.epochs, hp.batch_size, hp.max_length, hp.use_lora, hp.lora_rank) == (3, 4, 512, True, 16)


class TestCost:
    def test_estimate_scales_with_epochs_and_price(self):
        s = make_test_settings()
        report = {"valid_examples": 1000, "avg_prompt_length": 200, "avg_response_length": 200}
        model = base_model(s, "gpt2")
        inst = {**instance_type(make_test_settings(backend="sagemaker"), "ml.g5.xlarge", "training")}
        one = cost.estimate(report, model, Hyperparameters(epochs=1), inst, 1.21, 0.2)
        three = cost.estimate(report, model, Hyperparameters(epochs=3), inst, 1.21, 0.2)
        assert one["estimated_tokens"] == 80_000 and three["estimated_tokens"] == 240_000
        assert three["estimated_seconds"] > one["estimated_seconds"] >= inst["startup_seconds"]
        assert one["estimated_cost"] == round(one["estimated_seconds"] / 3600 * 1.21, 4)
        assert one["assumptions"]["tokens_from"].startswith("4 characters")

    def test_actual_cost(self):
        assert cost.actual(3600, 1.21) == 1.21
        assert cost.actual(1800, 37.69) == 18.845

    def test_unknown_instance_type_names_the_field(self):
        from app.errors import ValidationFailed

        with pytest.raises(ValidationFailed) as e:
            instance_type(make_test_settings(), "ml.x99.huge", "training")
        assert e.value.param == "instance_type"
