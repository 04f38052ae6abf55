"""The built-in tiny model: a randomly initialised Llama-style causal LM (and a T5
seq2seq twin) with a small byte-level BPE tokenizer trained on a built-in corpus.

It exists so that the embedded default, the tests and the README demo can train,
serve and evaluate for real on a machine with no model-hub access. It knows no
language until you fine-tune it: expect noise from the base model. Building it
takes about a second; it is cached under the data dir, built by the worker as it
starts (app.catalog.prepare_builtin_models) or else on first use.

This module needs the `local` extra (torch, transformers), imported here at module
level: transformers' lazy attribute imports are not thread-safe, and two threads
building a model at once had raised ImportError for LlamaConfig.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

TINY_LLAMA_ID = "llmtuner/tiny-llama"
TINY_T5_ID = "llmtuner/tiny-t5"

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A user uploads training data, picks a base model,
fine-tunes it with LoRA, watches progress and cost, evaluates it against the base model, deploys it
to an endpoint, invokes it and downloads the weights. How do I reset my password? Go to the login
page, click Forgot Password, enter your email address and follow the link. What are your business
hours? Monday to Friday, 9 AM to 6 PM. Machine learning is a subset of artificial intelligence that
lets computers learn from experience. Neural networks are computing systems made of layers of
connected units. Continue the following text: Once upon a time there was a small model that learned
to answer questions about orders, refunds, invoices, accounts, shipping and delivery.
{"name": "value", "items": [1, 2, 3], "ok": true} 0123456789 ### User: ### Assistant: ### Tool:
"""

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"}


def _build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **SPECIAL_TOKENS)
    fast.padding_side = "right"
    return fast


def build_tiny_model(path: str | Path, family: str = "llama", seed: int = 0) -> Path:
    """Write a tiny random model and its tokenizer to `path` (replaced atomically)."""
    path = Path(path)
    tokenizer = _build_tokenizer()
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model: object
    if family == "llama":
        cfg = LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
            tie_word_embeddings=False, **common,
        )
        model = LlamaForCausalLM(cfg)
    elif family == "t5":
        cfg5 = T5Config(
            d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
            decoder_start_token_id=tokenizer.pad_token_id, **common,  # type: ignore[call-arg]
        )
        model = T5ForConditionalGeneration(cfg5)
    else:
        raise ValueError(f"unknown tiny model family {family!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=path.parent))
    try:
        model.save_pretrained(tmp)  # type: ignore[attr-defined]
        tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


_BUILD_LOCK = threading.Lock()  # one build at a time in a process; the others then find it built


def ensure_tiny_model(data_dir: str | Path, family: str = "llama") -> Path:
    """The cached tiny model under `{data_dir}/base_models/`, built if missing."""
    path = Path(data_dir) / "base_models" / f"tiny-{family}"
    if not (path / "config.json").exists():
        with _BUILD_LOCK:
            if not (path / "config.json").exists():
                build_tiny_model(path, family=family)
    return path
