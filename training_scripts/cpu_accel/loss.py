"""The causal-LM loss over the labelled positions only.

`model(**batch).loss` runs the output head and its log-softmax at every position and then ignores
the positions without a label: with the loss on the response only (train_on_inputs false), the
prompt's logits are computed and thrown away. This computes the same loss from the decoder's hidden
states at the labelled positions alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

IGNORE_INDEX = -100
# Families whose causal-LM logits are exactly `lm_head(decoder(...).last_hidden_state)`: no logit
# soft-capping or scaling between the two (other models keep the plain `model(**batch).loss`).
PLAIN_HEAD_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi3"})


def causal_parts(model: Any) -> tuple[Any, Any] | None:
    """(decoder, head) of a causal LM (under peft or not) whose head is plain; None otherwise."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or config.model_type not in PLAIN_HEAD_FAMILIES or config.is_encoder_decoder:
        return None
    if any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    decoder = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = base.get_output_embeddings()
    return (decoder, head) if decoder is not None and head is not None else None


def _right_padded_mask_or_none(mask: torch.Tensor | None) -> torch.Tensor | None:
    """None when every row of `mask` is ones then zeros: with right padding the causal mask alone hides
    the padding from every real token, so attention runs its causal kernel without a mask tensor (same
    outputs at every real position; padded positions have no label). Other masks are kept."""
    if mask is None or mask.dim() != 2:
        return mask
    lengths = mask.sum(1, keepdim=True)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None] < lengths
    return None if bool((lengths > 0).all()) and torch.equal(mask.bool(), prefix) else mask


def labelled_loss(parts: tuple[Any, Any], batch: dict[str, torch.Tensor],
                  num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """Next-token cross-entropy over the labelled positions, reduced as transformers reduces it: the
    sum over `num_items_in_batch` when given (gradient accumulation), else the mean."""
    decoder, head = parts
    mask = _right_padded_mask_or_none(batch.get("attention_mask"))
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=mask, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    where = targets != IGNORE_INDEX
    loss = F.cross_entropy(head(hidden[:, :-1][where]).float(), targets[where], reduction="sum")
    return loss / (where.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
