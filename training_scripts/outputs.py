"""What a run leaves in $SM_MODEL_DIR: the adapter (or full model), the tokenizer, merged/ when asked,
base_model/ for a small local base, code/ for inference, and training_summary.json.

The artifact travels to users and other machines: it names the base model only by the name the
user gave (`base_model_name`), never by a path of the machine it was trained on.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from metrics import log

CODE_FILES = ("inference.py", "prompting.py", "modeling.py")
# The model's code/requirements.txt, which SageMaker's inference container installs before serving:
# the pinned versions the test suite runs (one file, checked by tests/parity/test_versions.py).
INFERENCE_REQUIREMENTS = Path(__file__).resolve().with_name("inference_requirements.txt")
BUNDLE_BASE_MAX_BYTES = 256 * 2**20


def looks_local(location: str) -> bool:
    return location.startswith(("/", ".", "~")) or Path(location).exists()


def public_name(base_model_name: str | None, location: str) -> str:
    """The base model's name in the outputs: `base_model_name`, else the location when it is a hub id,
    else the local folder's name."""
    if base_model_name:
        return base_model_name
    return Path(location).name if looks_local(location) else location


def name_model(model: Any, name: str) -> None:
    """Record `name` where peft and transformers take the base model's name from (adapter_config.json's
    base_model_name_or_path, the adapter README's base_model), instead of the folder it was loaded from."""
    model.config._name_or_path = name
    model.name_or_path = name


def save_outputs(trainer: Any, tokenizer: Any, cfg: Any, source: str, task: str, model_dir: Path) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    (model_dir / "training_args.bin").unlink(missing_ok=True)
    if cfg.use_lora and cfg.merge_adapter:
        save_merged(source, task, model_dir, tokenizer)
    if cfg.use_lora:
        bundle_base_model(source, model_dir / "base_model")
    copy_inference_code(model_dir / "code")


def bundle_base_model(source: str, dest: Path) -> None:
    """A small base model loaded from a folder (not a hub id) travels in the output as base_model/,
    so the tarball loads and deploys anywhere. Hub ids stay out: users load those from the hub."""
    src = Path(source)
    if not src.is_dir():
        return
    files = [p for p in src.rglob("*") if p.is_file()]
    if sum(p.stat().st_size for p in files) > BUNDLE_BASE_MAX_BYTES:
        log(f"the base model is over {BUNDLE_BASE_MAX_BYTES >> 20} MiB: not bundled in the output")
        return
    shutil.copytree(src, dest, dirs_exist_ok=True)


def save_merged(source: str, task: str, model_dir: Path, tokenizer: Any) -> None:
    """Reload the base model in full precision and fold the adapter into it (works after QLoRA too)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if task == "seq2seq_lm" else AutoModelForCausalLM
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    base = cls.from_pretrained(source, dtype=dtype)
    name_model(base, json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"])
    merged = PeftModel.from_pretrained(base, str(model_dir)).merge_and_unload()
    merged.save_pretrained(str(model_dir / "merged"))
    tokenizer.save_pretrained(str(model_dir / "merged"))


def copy_inference_code(code_dir: Path) -> None:
    here = Path(__file__).resolve().parent
    code_dir.mkdir(parents=True, exist_ok=True)
    for name in CODE_FILES:
        if (here / name).is_file():
            shutil.copy2(here / name, code_dir / name)
    shutil.copyfile(INFERENCE_REQUIREMENTS, code_dir / "requirements.txt")


def library_versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": sys.version.split()[0]}


def write_summary(model_dir: Path, summary: dict[str, Any]) -> None:
    (model_dir / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))
