"""A tiny LoRA adapter that has really learned something, trained in-process in a few seconds.

Writes what train.py writes (adapter, tokenizer, training_summary.json) so evaluate.py loads it
through the same modeling.load_model path, and packs it as model.tar.gz.
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training_scripts"))
import prompting  # noqa: E402

PAIRS = [
    ("What colour is the sky?", "The sky is blue."),
    ("How do I reset my password?", "Go to the login page and click Forgot Password."),
    ("What are your business hours?", "Monday to Friday, 9 AM to 6 PM."),
    ("Where is my order?", '{"status": "shipped", "days": 2}'),
    ("Can I get a refund?", "Yes, within 30 days of delivery."),
    ("Do you ship abroad?", "We ship to every country in Europe."),
]


def records(n: int) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in (PAIRS[i % len(PAIRS)] for i in range(n))]


def write_jsonl(path: Path, recs: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def train_adapter(base_dir: Path, out_dir: Path, steps: int = 60, seed: int = 0) -> Path:
    """Train LoRA on the repetitive PAIRS with a plain torch loop; returns out_dir/model.tar.gz."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    examples = [prompting.tokenize_record(r, tok, 128)[:2] for r in records(len(PAIRS))]
    n = max(len(i) for i, _ in examples)
    ids = torch.full((len(examples), n), tok.pad_token_id)
    labels = torch.full((len(examples), n), -100)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for row, (i, lab) in enumerate(examples):
        ids[row, : len(i)], labels[row, : len(lab)], mask[row, : len(i)] = torch.tensor(i), torch.tensor(lab), 1
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model_dir = out_dir / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    (model_dir / "training_summary.json").write_text(json.dumps({
        "base_model": str(base_dir), "base_model_source": str(base_dir), "task": "causal_lm",
        "prompt_template": prompting.TEMPLATE_NAME, "metrics": {"train_loss": float(loss.detach())}}))
    tar = out_dir / "model.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        for p in sorted(model_dir.iterdir()):
            t.add(p, arcname=p.name)
    return tar
