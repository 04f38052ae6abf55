"""training_scripts/speedups.py: each speed-up keeps the maths of the plain recipe."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training_scripts"))
import speedups  # noqa: E402


def tiny_causal_lm(family: str = "llama", **extra: Any) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=97, n_positions=64,
                                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=97, max_position_embeddings=64, **extra)
    return LlamaForCausalLM(cfg)


def with_lora(model: Any, dropout: float = 0.0, targets: list[str] | None = None) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, task_type="CAUSAL_LM",
                      target_modules=targets or ["q_proj", "k_proj", "v_proj", "o_proj"])
    return get_peft_model(model, lora)


def right_padded_batch() -> dict[str, Any]:
    """Two examples, the second right-padded; the first positions of each are prompt (label -100)."""
    ids = torch.randint(3, 97, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    ids[1, 8:] = 0
    labels = ids.clone()
    labels[:, :5] = -100
    labels[1, 8:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def grads(model: Any) -> list[Any]:
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("num_items", [None, 7])
def test_labelled_loss_equals_the_models_own_loss_and_gradients(family: str, num_items: int | None) -> None:
    targets = ["c_attn", "c_proj"] if family == "gpt2" else None
    model = with_lora(tiny_causal_lm(family), targets=targets)
    model.train()
    batch = right_padded_batch()
    kwargs = {"num_items_in_batch": torch.tensor(num_items)} if num_items else {}
    reference = model(**batch, **kwargs).loss
    reference.backward()
    expected = grads(model)
    model.zero_grad()

    parts = speedups.causal_parts(model)
    assert parts is not None
    ours = speedups.labelled_loss(parts, batch, kwargs.get("num_items_in_batch"))
    ours.backward()
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads(model), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_models_with_a_scaled_or_capped_head_keep_the_plain_loss() -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=50,
                                             d_kv=8))
    assert speedups.causal_parts(t5) is None
    capped = tiny_causal_lm()
    capped.config.final_logit_softcapping = 30.0
    assert speedups.causal_parts(capped) is None
    assert speedups.causal_parts(tiny_causal_lm()) is not None


@pytest.fixture(params=["torch's ops", "compiled, one thread"])
def dropout_path(request: pytest.FixtureRequest) -> Any:
    """FastDropout's two ways to a mask: torch's ops (several intra-op threads) and, with one thread as a
    shard thread has on 2 cores, cpu_kernels' one-pass kernel."""
    threads = torch.get_num_threads()
    if request.param != "torch's ops":
        compiled_kernels()
        torch.set_num_threads(1)
    elif threads == 1:
        torch.set_num_threads(2)
    yield request.param
    torch.set_num_threads(threads)


def test_fast_dropout_drops_at_rate_p_and_scales_the_rest(dropout_path: str) -> None:
    drop = speedups.FastDropout(0.1)
    x = torch.ones(1_000_003, requires_grad=True)  # not a multiple of 4: the tail draw is cut
    torch.manual_seed(1)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.002
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.9))
    y.backward(torch.full_like(y, 2.0))
    assert torch.equal(x.grad != 0, kept)  # the same mask in backward
    torch.testing.assert_close(x.grad[kept], torch.full_like(y[kept], 2 / 0.9))
    torch.manual_seed(1)
    assert torch.equal(drop(x.detach()), y.detach())  # seeded like torch's own dropout


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_compiled_dropout_masks_are_uniform_seeded_and_independent(p: float) -> None:
    compiled_kernels()
    drop = speedups.FastDropout(p)
    x = torch.randn(3, 700_001)  # over one 2^20-element chunk of the kernel, and not a multiple of 16
    gen = torch.Generator().manual_seed(7)
    speedups._shard.generator = gen
    try:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        masked, keep = drop.masked(x)
        again = drop.masked(x)[1]
        gen.manual_seed(7)
        replay = drop.masked(x)[1]
    finally:
        torch.set_num_threads(threads)
        speedups._shard.generator = None
    assert keep.dtype == torch.uint8 and keep.shape == x.shape and set(keep.unique().tolist()) == {0, 1}
    assert torch.equal(masked, x * keep)
    rate = 1 - keep.float().mean().item()
    assert abs(rate - p) < 5 * (p * (1 - p) / keep.numel()) ** 0.5  # 5 sigma
    assert torch.equal(replay, keep) and not torch.equal(again, keep)  # from the seed; each call draws anew
    flat = keep.flatten().float()  # neighbouring elements (one hash each) are uncorrelated
    corr = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()
    assert abs(corr) < 5 / keep.numel() ** 0.5
    for row in keep.float():  # each row keeps at rate 1 - p too (the second spans the 2^20-element chunks' seam)
        assert abs(1 - row.mean().item() - p) < 5 * (p * (1 - p) / row.numel()) ** 0.5


def test_fast_dropout_is_the_identity_in_eval_and_at_p_zero() -> None:
    x = torch.randn(4, 8)
    drop = speedups.FastDropout(0.5).eval()
    assert drop(x) is x
    assert speedups.FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        speedups.FastDropout(1.0)


def test_lora_dropouts_are_swapped_and_the_adapter_is_unchanged(tmp_path: Path) -> None:
    model = with_lora(tiny_causal_lm(), dropout=0.05)
    assert speedups.use_fast_lora_dropout(model) == 8  # 4 target modules x 2 layers
    assert speedups.use_fast_lora_dropout(model) == 0  # already swapped
    layers = [m for m in model.modules() if isinstance(m, speedups.FastDropout)]
    assert len(layers) == 8 and all(m.p == 0.05 for m in layers)
    model.train()
    model(**right_padded_batch()).loss.backward()  # trains through the new dropout
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists()
    assert speedups.use_fast_lora_dropout(with_lora(tiny_causal_lm(), dropout=0.0)) == 0


def test_tune_allocator_reports_whether_it_applied() -> None:
    applied = speedups.tune_allocator()
    assert applied is (sys.platform.startswith("linux") and applied)  # a bool; True on glibc Linux
    if Path("/lib/x86_64-linux-gnu/libc.so.6").exists():
        assert applied is True


def batch_of_lengths(lengths: list[int]) -> dict[str, Any]:
    """Right-padded rows of these lengths (in this order), the first 3 positions of each unlabelled."""
    width = max(lengths)
    ids = torch.randint(3, 97, (len(lengths), width))
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_shards_are_length_sorted_trimmed_and_capped_in_tokens() -> None:
    lengths = [7, 12, 3, 12, 9, 5, 11, 6]
    batch = batch_of_lengths(lengths)
    plain = speedups.ShardedBackward.shards(batch, 2, max_tokens=10**9)
    assert [s["attention_mask"].sum(1).tolist() for s in plain] == [[12, 12, 11, 9], [7, 6, 5, 3]]
    assert [s["input_ids"].shape for s in plain] == [(4, 12), (4, 7)]  # each cut to its own longest row
    # 8 rows x 12 tokens over a 30-token cap: 4 shards would do (a multiple of the 2 threads), 2 rows each
    capped = speedups.ShardedBackward.shards(batch, 2, max_tokens=30)
    assert [s["attention_mask"].sum(1).tolist() for s in capped] == [[12, 12], [11, 9], [7, 6], [5, 3]]
    assert all(s["input_ids"].numel() <= 30 for s in capped)
    assert len(speedups.ShardedBackward.shards(batch, 2, max_tokens=40)) == 4  # 3 would do: rounded up to 4
    assert len(speedups.ShardedBackward.shards(batch, 2, max_tokens=1)) == 8  # a row per shard at least
    assert len(speedups.ShardedBackward.shards(batch_of_lengths([5]), 2)) == 1
    odd = speedups.ShardedBackward.shards(batch_of_lengths([12] * 5), 2, max_tokens=20)  # 5 rows, 1 fits
    assert len(odd) == 5 and all(s["input_ids"].numel() <= 20 for s in odd)
    sources = []  # every row exactly once, its ids, mask and labels together
    for shard in capped:
        for ids, labels, mask in zip(shard["input_ids"], shard["labels"], shard["attention_mask"], strict=True):
            source = next(i for i in range(8) if torch.equal(batch["input_ids"][i, :len(ids)], ids)
                          and i not in sources)
            assert torch.equal(batch["labels"][source, :len(labels)], labels)
            assert torch.equal(batch["attention_mask"][source, :len(mask)], mask)
            assert int(batch["attention_mask"][source].sum()) == int(mask.sum())  # only padding was cut
            sources.append(source)
    assert sorted(sources) == list(range(8))


def test_sharded_backward_in_more_shards_than_threads_gives_the_batch_gradients(monkeypatch: Any) -> None:
    model = with_lora(tiny_causal_lm())
    model.train()
    batch = batch_of_lengths([12, 9, 12, 4, 7, 11, 10, 6])
    reference = speedups.labelled_loss(speedups.causal_parts(model), batch)
    reference.backward()
    expected = grads(model)
    monkeypatch.setattr(speedups, "SHARD_MAX_TOKENS", 12)  # 8 shards of a row on 2 threads
    assert len(speedups.ShardedBackward.shards(batch, 2, speedups.SHARD_MAX_TOKENS)) == 8
    loss, got = sharded_grads(model, batch, 2)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    for g, want in zip(got, expected, strict=True):
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-6)


def sharded_grads(model: Any, batch: dict[str, Any], workers: int, seed: int = 0) -> tuple[Any, list[Any]]:
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    torch.manual_seed(seed)
    num_items = (batch["labels"][:, 1:] != -100).sum()
    loss = speedups.ShardedBackward(speedups.causal_parts(model), params, workers)(batch, num_items)
    return loss, grads(model)


@pytest.mark.parametrize("workers", [2, 3])
def test_sharded_backward_gives_the_batch_loss_and_gradients(workers: int) -> None:
    model = with_lora(tiny_causal_lm())
    model.train()
    batch = right_padded_batch()
    batch = {k: torch.cat([v, v.flip(0), v]) for k, v in batch.items()}  # 6 rows, padded ones among them
    reference = speedups.labelled_loss(speedups.causal_parts(model), batch)
    reference.backward()
    expected = grads(model)
    loss, got = sharded_grads(model, batch, workers)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    for g, want in zip(got, expected, strict=True):
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-6)


def test_sharded_backward_with_dropout_is_reproducible_from_the_seed() -> None:
    model = with_lora(tiny_causal_lm(), dropout=0.2)
    speedups.use_fast_lora_dropout(model)
    model.train()
    assert speedups.ShardedBackward.usable(model)
    batch = {k: torch.cat([v, v]) for k, v in right_padded_batch().items()}
    first, again, other = (sharded_grads(model, batch, 2, seed)[1] for seed in (5, 5, 6))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_models_with_their_own_dropout_are_not_sharded() -> None:
    assert not speedups.ShardedBackward.usable(with_lora(tiny_causal_lm(attention_dropout=0.1)))
    assert not speedups.ShardedBackward.usable(with_lora(tiny_causal_lm(), dropout=0.1))  # torch's dropout
    assert speedups.ShardedBackward.usable(with_lora(tiny_causal_lm(), dropout=0.0))


# ---------------------------------------------------------------- fused CPU kernels


def lora_with_trained_b(dropout: float = 0.0, family: str = "llama", **extra: Any) -> Any:
    """A LoRA model whose B matrices are not zero, so that every gradient path is exercised."""
    model = with_lora(tiny_causal_lm(family, **extra), dropout=dropout)
    torch.manual_seed(9)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model


def fused_variant(model: Any) -> Any:
    import copy

    other = copy.deepcopy(model)
    speedups.use_fast_lora_dropout(other)
    assert speedups.fuse_lora_linears(other) == 8
    assert speedups.fuse_rms_norms(other) == 5  # 2 per layer and the final norm
    return other


def loss_and_grads(model: Any, batch: dict[str, Any], bf16: bool = False, seed: int = 3) -> tuple[Any, list[Any]]:
    model.zero_grad()
    torch.manual_seed(seed)
    with speedups.autocast("cpu", bf16):
        loss = model(**batch).loss
    loss.backward()
    return loss.detach(), grads(model)


@pytest.fixture
def rotary_restored() -> Any:
    yield
    speedups.unfuse_rotary()


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fused_kernels_give_the_models_loss_and_gradients(dropout: float, rotary_restored: None,
                                                          dropout_path: str) -> None:
    plain = lora_with_trained_b(dropout)
    speedups.use_fast_lora_dropout(plain)  # the same random masks on both sides (same seed, same draws)
    fused = fused_variant(plain)
    plain.train()
    fused.train()
    batch = right_padded_batch()
    want_loss, want = loss_and_grads(plain, batch)
    assert speedups.fuse_rotary(fused)
    got_loss, got = loss_and_grads(fused, batch)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    if dropout:  # the dropout is really applied: another seed gives other gradients
        assert not torch.equal(loss_and_grads(fused, batch, seed=4)[1][0], got[0])


def test_fused_kernels_under_bf16_autocast_match_to_bf16_precision(rotary_restored: None) -> None:
    plain = lora_with_trained_b()
    fused = fused_variant(plain)
    speedups.fuse_rotary(fused)
    batch = right_padded_batch()
    want_loss, want = loss_and_grads(plain, batch, bf16=True)
    got_loss, got = loss_and_grads(fused, batch, bf16=True)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-3, atol=1e-3)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=0.05, atol=2e-3)


def test_fused_lora_layer_falls_back_when_the_layer_is_not_plain_lora() -> None:
    model = fused_variant(lora_with_trained_b(0.1))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 5, 32)
    model.eval()
    expected = layer.base_layer(x) + layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
    torch.testing.assert_close(layer(x), expected)  # eval: no dropout
    with model.disable_adapter():
        torch.testing.assert_close(layer(x), layer.base_layer(x))
    layer.merge()
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)  # merged: the base layer only
    layer.unmerge()
    layer.base_layer.weight.requires_grad_(True)  # full fine-tuning of the base: peft's own forward
    assert speedups._plain_lora(layer) is None
    gpt2 = with_lora(tiny_causal_lm("gpt2"), targets=["c_attn", "c_proj"])
    assert speedups.fuse_lora_linears(gpt2) == 0  # Conv1D base layers (fan_in_fan_out)
    from peft import LoraConfig, get_peft_model

    dora = get_peft_model(tiny_causal_lm(), LoraConfig(r=4, use_dora=True, target_modules=["q_proj"]))
    assert speedups.fuse_lora_linears(dora) == 0


@pytest.fixture
def one_thread() -> Any:
    """One intra-op thread, as each of ShardedBackward's shard threads has on 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compiled_kernels() -> Any:
    lib = speedups._kernels()
    if lib is None:
        import cpu_kernels

        pytest.skip(f"no compiled CPU kernels here: {cpu_kernels.why_not()}")
    return lib


def test_compiled_swiglu_kernels_compute_silu_times_up_and_its_gradients() -> None:
    compiled_kernels()
    extremes = torch.tensor([[-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4] + [1.0] * 993])  # exp over/underflows
    gate = torch.cat([torch.randn(3, 1000) * 4, extremes])
    gate.requires_grad_()
    up = torch.randn(4, 1000, requires_grad=True)
    grad = torch.randn(4, 1000)
    want = torch.nn.functional.silu(gate) * up
    want_grads = torch.autograd.grad(want, (gate, up), grad)
    got = speedups._SwiGLU.apply(gate, up)
    got_grads = torch.autograd.grad(got, (gate, up), grad)
    assert "_SwiGLU" in type(got.grad_fn).__name__
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    empty = speedups._SwiGLU.apply(torch.empty(0, 8), torch.empty(0, 8))
    assert empty.shape == (0, 8)


def test_compiled_swiglu_mlp_trains_the_model_as_its_own_forward_does(one_thread: None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    compiled_kernels()
    plain = with_lora(tiny_causal_lm(), targets=["q_proj", "v_proj", "up_proj"])
    fused = with_lora(tiny_causal_lm(), targets=["q_proj", "v_proj", "up_proj"])
    fused.load_state_dict(plain.state_dict())
    assert speedups.fuse_swiglu(fused) == 2 and speedups.fuse_swiglu(fused) == 0  # once per MLP
    assert speedups.fuse_swiglu(tiny_causal_lm("gpt2")) == 0  # GELU MLP: not SwiGLU
    batch = right_padded_batch()
    losses = []
    for model in (plain, fused):
        model.train()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for got, want in zip(grads(fused), grads(plain), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    mlp = fused.base_model.model.model.layers[0].mlp
    x = torch.randn(2, 3, 32, requires_grad=True)
    down_input = {}
    mlp.down_proj.register_forward_pre_hook(lambda m, args: down_input.update(x=args[0]))
    mlp(x)
    assert "_SwiGLU" in type(down_input["x"].grad_fn).__name__
    torch.set_num_threads(2)  # more intra-op threads than the single-threaded kernels use: the model's own ops
    mlp(x)
    assert "_SwiGLU" not in type(down_input["x"].grad_fn).__name__
    torch.set_num_threads(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mlp(x)
    assert "_SwiGLU" not in type(down_input["x"].grad_fn).__name__
    monkeypatch.setattr(speedups, "_kernels", lambda: None)  # no library (as bench/train_step_profile.py compares)
    mlp(x)
    assert "_SwiGLU" not in type(down_input["x"].grad_fn).__name__
    keep = speedups.FastDropout(0.5).masked(torch.randn(64, 64))[1]
    assert keep.dtype == torch.uint8  # torch's ops made the mask


def test_fused_rms_norm_trains_its_weight_and_keeps_other_dtypes_on_the_original() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(16, eps=1e-5)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 4, 16, requires_grad=True)
    g = torch.randn(3, 4, 16)
    norm(x).backward(g)
    want_x, want_w = x.grad.clone(), norm.weight.grad.clone()
    x.grad = norm.weight.grad = None
    assert speedups.fuse_rms_norms(norm) == 1 and speedups.fuse_rms_norms(norm) == 0
    y = norm(x)
    y.backward(g)
    torch.testing.assert_close(x.grad, want_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.weight.grad, want_w, rtol=1e-5, atol=1e-6)
    assert "_RMSNorm" in type(y.grad_fn).__name__
    half = norm(x.detach().bfloat16())  # not fp32: the model's own forward (bf16 input, fp32 weight -> fp32)
    assert half.dtype == torch.float32 and type(half.grad_fn).__name__ == "MulBackward0"


def test_fused_rotary_is_the_original_rotation_for_transposed_views(rotary_restored: None) -> None:
    from transformers.models.llama import modeling_llama
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    original = modeling_llama.apply_rotary_pos_emb
    cfg = tiny_causal_lm().config
    cos, sin = LlamaRotaryEmbedding(cfg)(torch.zeros(1), torch.arange(6)[None].expand(2, 6))
    q0 = torch.randn(2, 6, 4, 8, requires_grad=True)  # (batch, length, heads, head dim), as the model has it
    k0 = torch.randn(2, 6, 4, 8, requires_grad=True)
    gq, gk = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)

    def run(fn: Any, q_dtype: Any = torch.float32) -> list[Any]:
        q0.grad = k0.grad = None
        q, k = fn(q0.to(q_dtype).transpose(1, 2), k0.transpose(1, 2), cos, sin)
        torch.autograd.backward([q, k], [gq, gk])
        return [q.detach(), k.detach(), q0.grad.clone(), k0.grad.clone(), q.dtype, q.stride()]

    want = run(original)
    assert speedups.fuse_rotary(tiny_causal_lm()) and modeling_llama.apply_rotary_pos_emb is not original
    got = run(modeling_llama.apply_rotary_pos_emb)
    for a, b in zip(got[:4], want[:4], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert got[4] == want[4]  # same dtype
    assert got[5] == (192, 48, 8, 1)  # written contiguous: the attention reshapes it to (batch * heads, ...) as a view
    view = q0.transpose(1, 2)  # a gradient comes back in its input's layout: views, not copies, to the projection
    assert speedups._empty_in_order(gq, speedups._dim_order(view)).stride() == view.stride()
    mixed_want, mixed_got = run(original, torch.bfloat16), run(modeling_llama.apply_rotary_pos_emb, torch.bfloat16)
    assert mixed_got[4] == mixed_want[4] == torch.float32  # bf16 q times fp32 cos promotes, as in the model
    torch.testing.assert_close(mixed_got[2], mixed_want[2], rtol=1e-2, atol=1e-2)
    cos, sin = torch.randn(2, 6, 8), torch.randn(2, 6, 8)  # halves that differ: the general formula
    for a, b in zip(run(modeling_llama.apply_rotary_pos_emb)[:4], run(original)[:4], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    speedups.unfuse_rotary()
    assert modeling_llama.apply_rotary_pos_emb is original
    assert not speedups.fuse_rotary(tiny_causal_lm("gpt2"))  # GPT-2 has no rotary embedding


def test_sum_cross_entropy_equals_torchs() -> None:
    logits = torch.randn(7, 11, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    want = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    (want * 3).backward()
    want_grad = logits.grad.clone()
    logits.grad = None
    got = speedups._SumCrossEntropy.apply(logits, targets)
    (got * 3).backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(logits.grad, want_grad)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [4, 128])
def test_head_cross_entropy_equals_the_head_then_torchs_loss(bias: bool, chunk: int, monkeypatch: Any) -> None:
    monkeypatch.setattr(speedups, "_HEAD_CHUNK_ROWS", chunk)  # 4: 3 chunks, the last one short
    head = torch.nn.Linear(8, 13, bias=bias).requires_grad_(False)
    hidden = torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 13, (11,))
    want = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    (want * 3).backward()
    want_grad = hidden.grad.clone()
    hidden.grad = None
    got = speedups._HeadCrossEntropy.apply(hidden, head.weight, head.bias, targets, torch.float32)
    (got * 3).backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(hidden.grad, want_grad)
    with torch.no_grad():  # evaluation: the loss alone
        torch.testing.assert_close(speedups._HeadCrossEntropy.apply(hidden, head.weight, head.bias, targets,
                                                                    torch.float32), want.detach())
    empty = torch.zeros(0, 8, requires_grad=True)
    none = speedups._HeadCrossEntropy.apply(empty, head.weight, head.bias, targets[:0], torch.float32)
    assert float(none.detach()) == 0


def test_head_cross_entropy_under_bf16_autocast_computes_what_the_plain_path_does(monkeypatch: Any) -> None:
    monkeypatch.setattr(speedups, "_HEAD_CHUNK_ROWS", 5)
    model = with_lora(tiny_causal_lm())
    decoder, head = speedups.causal_parts(model)
    batch = right_padded_batch()
    fused = []
    apply = speedups._HeadCrossEntropy.apply
    monkeypatch.setattr(speedups._HeadCrossEntropy, "apply", lambda *a: fused.append(a[4]) or apply(*a))

    def loss_and_grads(use_fused: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        monkeypatch.setattr(speedups, "_fused_head_applies", lambda *_: use_fused)
        with speedups.autocast("cpu", True):
            loss = speedups.labelled_loss((decoder, head), batch)
        loss.backward()
        return loss.detach(), grads(model)

    want_loss, want = loss_and_grads(False)  # head(rows).float() then _SumCrossEntropy
    got_loss, got = loss_and_grads(True)
    assert fused == [torch.bfloat16]
    assert got_loss.dtype == torch.float32
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, want, strict=True):  # bf16 GEMMs in other shapes: a few bf16 roundings apart at most
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_a_trained_head_keeps_the_plain_loss() -> None:
    head = torch.nn.Linear(8, 13)
    rows = torch.randn(3, 8)
    assert not speedups._fused_head_applies(head, rows)  # full fine-tuning trains the head
    assert speedups._fused_head_applies(head.requires_grad_(False), rows)
    assert not speedups._fused_head_applies(torch.nn.Sequential(head), rows)


def test_right_padding_runs_causal_attention_without_a_mask_and_other_padding_keeps_it() -> None:
    right = right_padded_batch()["attention_mask"]
    assert speedups._causal_mask_or_none(right) is None
    assert speedups._causal_mask_or_none(torch.ones(2, 5, dtype=torch.long)) is None
    left = right.flip(1)
    assert speedups._causal_mask_or_none(left) is left
    empty_row = right.clone()
    empty_row[1] = 0
    assert speedups._causal_mask_or_none(empty_row) is empty_row
    model = with_lora(tiny_causal_lm())
    batch = right_padded_batch()
    batch = {k: v.flip(1) for k, v in batch.items()}  # left padding: the mask must still be applied
    want = model(**batch).loss
    torch.testing.assert_close(speedups.labelled_loss(speedups.causal_parts(model), batch), want)


@pytest.fixture
def attention_restored() -> Any:
    yield
    speedups.unfuse_attention()


@pytest.mark.parametrize(("length", "kv_heads"), [(150, 4), (64, 4), (7, 2), (130, 1)])
def test_block_causal_attention_equals_sdpa_forward_and_backward(length: int, kv_heads: int) -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = type("Attn", (), {"is_causal": True, "num_key_value_groups": 4 // kv_heads})()
    q0 = torch.randn(2, length, 4, 16, requires_grad=True)  # (batch, length, heads, head dim), as the model has it
    k0, v0 = (torch.randn(2, length, kv_heads, 16, requires_grad=True) for _ in range(2))
    g = torch.randn(2, length, 4, 16)

    def run(fn: Any) -> list[Any]:
        q0.grad = k0.grad = v0.grad = None
        out, _ = fn(module, q0.transpose(1, 2), k0.transpose(1, 2), v0.transpose(1, 2), None, scaling=0.3)
        out.backward(g)
        return [out.detach(), q0.grad.clone(), k0.grad.clone(), v0.grad.clone()]

    calls = []
    apply = speedups._BlockCausalAttention.apply
    speedups._BlockCausalAttention.apply = lambda *a: calls.append(1) or apply(*a)  # type: ignore[method-assign]
    try:
        speedups._original_sdpa.append(sdpa_attention_forward)
        got = run(speedups.causal_attention_forward)
    finally:
        speedups._original_sdpa.clear()
        del speedups._BlockCausalAttention.apply
    want = run(sdpa_attention_forward)
    assert calls == [1]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_block_attention_trains_the_model_as_sdpa_does_and_falls_back_elsewhere(attention_restored: None) -> None:
    from transformers import AttentionInterface

    original = AttentionInterface._global_mapping["sdpa"]
    model = lora_with_trained_b()
    batch = right_padded_batch()
    batch["attention_mask"] = speedups._causal_mask_or_none(batch["attention_mask"])  # None: right padding
    want_loss, want = loss_and_grads(model, batch)
    assert speedups.fuse_attention(model) and AttentionInterface._global_mapping["sdpa"] is not original
    calls = []
    apply = speedups._BlockCausalAttention.apply
    speedups._BlockCausalAttention.apply = lambda *a: calls.append(1) or apply(*a)  # type: ignore[method-assign]
    try:
        got_loss, got = loss_and_grads(model, batch)
        assert len(calls) == 2  # both layers
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        left = right_padded_batch()
        left["attention_mask"] = left["attention_mask"].flip(1)  # a mask tensor: sdpa's own kernel
        loss_and_grads(model, left)
        with torch.no_grad():
            model(**batch)  # evaluation
        speedups._ATTENTION_SAVED_MAX, saved_max = 0, speedups._ATTENTION_SAVED_MAX
        try:
            loss_and_grads(model, batch)  # too long to keep the probabilities
        finally:
            speedups._ATTENTION_SAVED_MAX = saved_max
        assert len(calls) == 2
    finally:
        del speedups._BlockCausalAttention.apply
    speedups.unfuse_attention()
    assert AttentionInterface._global_mapping["sdpa"] is original
    assert not speedups.fuse_attention(tiny_causal_lm("gpt2"))


@pytest.mark.parametrize("group_bytes", [1, 70 * 16 * 4 * 2])  # a head at a time; 2 of the 7 heads (a last group of 1)
def test_block_attention_in_head_groups_gives_sdpas_values_and_gradients(group_bytes: int, monkeypatch: Any) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(7, 70, 16, requires_grad=True) for _ in range(3))  # 70 tokens: a block and a part
    g = torch.randn(7, 70, 16)
    monkeypatch.setattr(speedups, "_ATTENTION_GROUP_BYTES", group_bytes)
    assert speedups._head_group(7, 70, 16, torch.float32) == (1 if group_bytes == 1 else 2)
    out = speedups._BlockCausalAttention.apply(q, k, v, 0.3)
    out.backward(g)
    got = [out.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()]
    q.grad = k.grad = v.grad = None
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    want.backward(g)
    for a, b in zip(got, [want.detach(), q.grad, k.grad, v.grad], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_head_groups_fit_their_keys_in_the_group_budget() -> None:
    budget = speedups._ATTENTION_GROUP_BYTES
    fp32 = torch.float32
    assert speedups._head_group(32, 512, 64, fp32) == 4  # fp32 keys of 4 heads x 512 x 64: 512 KiB
    assert speedups._head_group(32, 256, 64, fp32) == 8
    assert speedups._head_group(32, 4096, 128, fp32) == 1  # one head over the budget still goes alone
    assert speedups._head_group(6, 16, 64, fp32) == 6  # short: all heads at once
    assert speedups._head_group(32, 512, 64, torch.bfloat16) == 32  # bf16: all heads at once
    for heads, length in [(32, 100), (16, 333), (64, 700)]:
        group = speedups._head_group(heads, length, 64, fp32)
        assert group == heads or group * length * 64 * 4 <= budget < 2 * group * length * 64 * 4


def relative_errors(got: list[torch.Tensor], want: list[torch.Tensor]) -> list[float]:
    return [float((a.float() - b).norm() / b.norm()) for a, b in zip(got, want, strict=True)]


@pytest.mark.parametrize("length", [70, 200])
def test_block_attention_in_bf16_is_about_as_accurate_as_sdpas_bf16_kernel(length: int) -> None:
    """Against fp32, bf16 block attention (scores rounded to bf16 before the softmax, as transformers'
    eager attention does, probabilities kept in bf16) errs about as much as torch's bf16 flash kernel."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(6, length, 32, requires_grad=True) for _ in range(3))
    g = torch.randn(6, length, 32)

    def run(fn: Any, tensors: tuple[torch.Tensor, ...], grad: torch.Tensor) -> list[torch.Tensor]:
        out = fn(*tensors)
        out.backward(grad)
        return [out.detach(), *(t.grad for t in tensors)]

    want = run(lambda *t: speedups._BlockCausalAttention.apply(*t, 0.3), (q, k, v), g)
    want_sdpa = [q.grad.clone(), k.grad.clone(), v.grad.clone()]
    q.grad = k.grad = v.grad = None
    sdpa = run(lambda *t: torch.nn.functional.scaled_dot_product_attention(*t, is_causal=True, scale=0.3), (q, k, v), g)
    for a, b in zip(sdpa[1:], want_sdpa, strict=True):  # the fp32 reference is sdpa's own fp32 result
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    def bf16() -> tuple[torch.Tensor, ...]:
        return tuple(t.detach().bfloat16().requires_grad_() for t in (q, k, v))

    flash = relative_errors(run(lambda *t: torch.nn.functional.scaled_dot_product_attention(
        *t, is_causal=True, scale=0.3), bf16(), g.bfloat16()), want)
    block = relative_errors(run(lambda *t: speedups._BlockCausalAttention.apply(*t, 0.3), bf16(), g.bfloat16()), want)
    assert max(flash) < 0.02  # bf16 rounding: ~0.4% per value
    for ours, theirs in zip(block, flash, strict=True):  # output, dq, dk, dv
        assert ours < 2 * theirs + 1e-3, (block, flash)


def test_block_attention_runs_under_bf16_autocast_and_trains_as_sdpa_does(attention_restored: None) -> None:
    model = lora_with_trained_b()
    batch = right_padded_batch()
    batch["attention_mask"] = None  # right padding (see _causal_mask_or_none)
    want_loss, want = loss_and_grads(model, batch, bf16=True)
    fp32_loss, fp32 = loss_and_grads(model, batch)
    assert speedups.fuse_attention(model)
    calls = []
    apply = speedups._BlockCausalAttention.apply

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        calls.append((q.dtype, k.dtype, v.dtype, scale, torch.is_autocast_enabled("cpu")))
        return apply(q, k, v, scale)

    speedups._BlockCausalAttention.apply = spy  # type: ignore[method-assign]
    try:
        got_loss, got = loss_and_grads(model, batch, bf16=True)
    finally:
        del speedups._BlockCausalAttention.apply
    # rotary's fp32 queries scaled before they are rounded; autocast off inside
    assert calls == [(torch.bfloat16, torch.bfloat16, torch.bfloat16, 1.0, False)] * 2
    assert got_loss.dtype == want_loss.dtype == torch.float32
    torch.testing.assert_close(got_loss, want_loss, rtol=2e-3, atol=2e-3)
    for ours, sdpas, exact in zip(got, want, fp32, strict=True):  # both bf16 results are as far from fp32
        assert ours.dtype == sdpas.dtype
        assert float((ours - exact).norm()) <= 2 * float((sdpas - exact).norm()) + 1e-3 * float(exact.norm())


# ---------------------------------------------------------------- oneDNN linear layers

needs_onednn = pytest.mark.skipif(not speedups.onednn_linear_available(), reason="this torch has no oneDNN linear")


@needs_onednn
def test_onednn_linears_give_the_models_loss_and_gradients(rotary_restored: None) -> None:
    plain = lora_with_trained_b(0.2)
    speedups.use_fast_lora_dropout(plain)
    fast = fused_variant(plain)
    # the MLP's 3, the 4 LoRA base layers, their A and B (trained: never oneDNN's) per layer, and the head
    assert speedups.use_onednn_linears(fast) == 2 * (3 + 4 * 3) + 1
    plain.train()
    fast.train()
    calls = []
    linear = speedups._onednn_linear
    speedups._onednn_linear = lambda *a: calls.append(1) or linear(*a)  # type: ignore[assignment]
    try:
        batch = right_padded_batch()
        want_loss, want = loss_and_grads(plain, batch)
        got_loss, got = loss_and_grads(fast, batch)
    finally:
        speedups._onednn_linear = linear  # type: ignore[assignment]
    # forward and input gradient of each frozen layer and of the head, but for the first layer's q, k and v,
    # whose input (the embeddings) needs no gradient
    assert len(calls) == 2 * 2 * (3 + 4) + 2 - 3
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


@needs_onednn
def test_a_onednn_head_multiplies_its_chunks_through_onednn(monkeypatch: Any) -> None:
    monkeypatch.setattr(speedups, "_HEAD_CHUNK_ROWS", 4)
    model = with_lora(tiny_causal_lm())
    parts = speedups.causal_parts(model)
    batch = right_padded_batch()  # 10 labelled rows: 3 chunks
    want_loss, want = loss_of_parts(model, parts, batch)
    speedups.use_onednn_linears(model)
    head = parts[1].weight
    calls = []
    linear = speedups._onednn_linear
    monkeypatch.setattr(speedups, "_onednn_linear",
                        lambda *a: calls.append(a[1].data_ptr() == head.data_ptr()) or linear(*a))
    got_loss, got = loss_of_parts(model, parts, batch)
    assert calls.count(True) == 2 * 3  # the head's forward and input gradient, per chunk
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def loss_of_parts(model: Any, parts: Any, batch: dict[str, Any]) -> tuple[Any, list[Any]]:
    model.zero_grad()
    loss = speedups.labelled_loss(parts, batch)
    loss.backward()
    return loss.detach(), grads(model)


@needs_onednn
def test_onednn_linears_fall_back_and_follow_the_weights() -> None:
    model = lora_with_trained_b()
    speedups.fuse_lora_linears(model)
    speedups.use_onednn_linears(model)
    model.eval()
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    mlp = model.base_model.model.model.layers[0].mlp.up_proj
    x = torch.randn(2, 5, 32)
    calls = []
    apply = speedups._OneDnnLinear.apply
    speedups._OneDnnLinear.apply = lambda *a: calls.append(1) or apply(*a)  # type: ignore[method-assign]
    try:
        torch.testing.assert_close(mlp(x), x @ mlp.weight.t(), rtol=1e-5, atol=1e-6)
        assert len(calls) == 1
        with speedups.autocast("cpu", True):
            assert mlp(x).dtype == torch.bfloat16  # autocast: the layer's own (bf16) forward
        mlp.weight.requires_grad_(True)  # trained (full fine-tuning): the layer's own forward
        mlp(x).sum().backward()
        assert mlp.weight.grad is not None
        mlp.weight.requires_grad_(False)
        assert len(calls) == 1
    finally:
        del speedups._OneDnnLinear.apply
    expected = q.base_layer(x) + q.lora_B["default"](q.lora_A["default"](x)) * q.scaling["default"]
    torch.testing.assert_close(q(x), expected, rtol=1e-5, atol=1e-6)
    q.merge()  # peft writes the merged weight through .data: the base layer multiplies by it
    torch.testing.assert_close(q(x), expected, rtol=1e-4, atol=1e-5)


def test_onednn_is_preferred_on_amd_cpus_with_avx512_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def cpu(vendor: str, flags: str) -> bool:
        monkeypatch.setattr(speedups, "_cpuinfo", lambda: {"vendor_id": vendor, "flags": flags})
        return speedups.onednn_linear_preferred()

    available = speedups.onednn_linear_available()
    assert cpu("AuthenticAMD", "fma avx2 avx512f avx512_bf16") is available  # Zen 4: MKL runs its generic path
    assert not cpu("AuthenticAMD", "fma avx2")  # Zen 2: no AVX-512 for oneDNN to win with
    assert not cpu("GenuineIntel", "fma avx2 avx512f amx_bf16")  # MKL's own AVX-512 path
    monkeypatch.setattr(speedups, "mkl_intel_kernels_on_amd", lambda: True)  # mkl_dispatch.load() ran in this process
    assert not cpu("AuthenticAMD", "fma avx2 avx512f avx512_bf16")  # MKL's AVX-512 path: as fast, no JIT per shape
