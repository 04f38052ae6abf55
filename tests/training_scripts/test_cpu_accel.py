"""training_scripts/cpu_accel/ against the plain recipe: the same loss and gradients, nothing left behind."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training_scripts"))

import cpu_accel  # noqa: E402
from cpu_accel.shards import ShardDropout, ShardedStep, split  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from app.training.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")


def lora_model(path: Path, dropout: float = 0.0) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():  # B starts at zero: give the adapters a gradient path both ways
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return model


def batch(vocab: int, rows: tuple[int, ...] = (9, 5, 7, 3)) -> dict[str, Any]:
    """Right-padded rows of these lengths, the first two tokens of each unlabelled (a prompt)."""
    gen = torch.Generator().manual_seed(1)
    width = max(rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, n in enumerate(rows):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=gen)
        mask[i, :n] = 1
        labels[i, 2:n] = ids[i, 2:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def grads(model: Any) -> dict[str, Any]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out


def test_labelled_loss_is_the_models_loss(tiny: Path) -> None:
    model = lora_model(tiny)
    b = batch(model.config.vocab_size)
    parts = cpu_accel.causal_parts(model)
    assert parts is not None
    plain = model(**b).loss
    plain.backward()
    expected = grads(model)
    ours = cpu_accel.labelled_loss(parts, b)
    ours.backward()
    assert ours.item() == pytest.approx(plain.item(), rel=1e-5)
    for name, g in grads(model).items():
        torch.testing.assert_close(g, expected[name], rtol=1e-4, atol=1e-6)
    summed = cpu_accel.labelled_loss(parts, b, num_items_in_batch=10)  # gradient accumulation's reduction
    labelled = int((b["labels"][:, 1:] != -100).sum())
    assert summed.item() == pytest.approx(ours.item() * labelled / 10, rel=1e-5)


def test_sharded_step_accumulates_the_plain_gradients(tiny: Path) -> None:
    model = lora_model(tiny)
    b = batch(model.config.vocab_size)
    labelled = (b["labels"][:, 1:] != -100).sum()
    cpu_accel.labelled_loss(cpu_accel.causal_parts(model), b, labelled).backward()
    expected = grads(model)
    step = ShardedStep(cpu_accel.causal_parts(model), [p for p in model.parameters() if p.requires_grad], 2)
    threads = torch.get_num_threads()
    try:
        loss = step(b, labelled, bf16=False)
    finally:
        step.close()
    assert torch.get_num_threads() == threads  # the shard threads' setting does not outlive the step
    assert loss.item() == pytest.approx(model(**b).loss.item(), rel=1e-5)
    for name, g in grads(model).items():
        torch.testing.assert_close(g, expected[name], rtol=1e-4, atol=1e-6)


def test_sharded_dropout_is_reproducible(tiny: Path) -> None:
    model = lora_model(tiny, dropout=0.3)
    b = batch(model.config.vocab_size)
    runs = []
    with cpu_accel.apply(model, enabled=True, device="cpu", bf16=False, use_lora=True, batch_size=4) as accel:
        assert all(type(m) is ShardDropout for m in model.modules() if isinstance(m, torch.nn.Dropout))
        for _ in range(2):
            torch.manual_seed(7)
            step = ShardedStep(cpu_accel.causal_parts(model), [p for p in model.parameters() if p.requires_grad], 2)
            step(b, 10, bf16=False)
            step.close()
            runs.append(grads(model))
    assert accel.record == {"enabled": True, "labelled_positions_loss": True,
                            "batch_shards": min(torch.get_num_threads(), 4)}
    assert all(type(m) is torch.nn.Dropout for m in model.modules() if isinstance(m, torch.nn.Dropout))
    for name, g in runs[0].items():
        assert torch.equal(g, runs[1][name]), name


def test_split_keeps_every_row_once_cut_to_its_own_length() -> None:
    b = batch(50, rows=(3, 9, 5, 7, 2))
    shards = split(b, 2)
    assert [s["input_ids"].shape for s in shards] == [(2, 9), (3, 5)]  # longest first
    rows = sorted(tuple(r[m.bool()].tolist()) for s in shards for r, m in zip(s["input_ids"], s["attention_mask"],
                                                                               strict=True))
    assert rows == sorted(tuple(r[m.bool()].tolist()) for r, m in zip(b["input_ids"], b["attention_mask"],
                                                                       strict=True))


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"enabled": False}, "cpu_accel is false"), ({"device": "cuda"}, "device is cuda")])
def test_off_gives_the_plain_trainer(tiny: Path, kwargs: dict[str, Any], reason: str) -> None:
    from transformers import Trainer

    model = lora_model(tiny, dropout=0.1)
    options = {"enabled": True, "device": "cpu", "bf16": False, "use_lora": True, "batch_size": 4} | kwargs
    with cpu_accel.apply(model, **options) as accel:
        assert accel.trainer_class is Trainer and accel.record == {"enabled": False, "reason": reason}
        assert not any(type(m) is ShardDropout for m in model.modules())
