"""Training speed-ups that keep the maths of the plain recipe (measured by bench/train_throughput.py).

- `tune_allocator`: glibc returns every freed block over its mmap threshold to the kernel, so each
  training step page-faults its activations back in (keeping them halved a CPU run's system time).
  Raising the threshold to its 32 MiB maximum and never trimming keeps those pages in the process.
- `FastDropout`: torch's CPU dropout draws one 32-bit random number per element through
  `bernoulli_`; this one takes 16 bits per element from a quarter as many 64-bit draws and keeps a
  1-byte mask for backward (~2x faster forward+backward here). The drop probability is rounded to a
  multiple of 1/65536 (0.05 -> 0.0500031). Used for LoRA's dropout on CPU only; CUDA's is already fast.
  In fp32 with one intra-op thread (each shard thread on 2 cores), `FastDropout.masked` has
  cpu_kernels.py's compiled kernel write the mask and the masked input in one pass, the 16 bits of
  each element from a counter-based hash keyed by one 64-bit draw of the shard's generator.
- `labelled_loss`: the causal-LM loss computed as `model(**batch).loss` is, but the output head and
  the log-softmax run only at the positions that have a label. With the loss on the response only
  (`train_on_inputs: false`), the prompt's logits were computed and thrown away. A frozen head (LoRA)
  and its loss run 128 rows at a time with the input gradient computed in forward
  (`_HeadCrossEntropy`): no [rows, vocab] tensor is kept (46 MiB a shard at the bench's 8k vocabulary,
  ~1 GiB at 152k), and the head with its loss took 25% (fp32) and 50% (bf16) less time (one thread).
- `ShardedBackward`: on a CPU, a batch split in as many shards as there are cores, each shard's
  forward and backward on its own thread with one intra-op thread, beats every op splitting itself
  across the cores (small matmuls and elementwise ops scale badly; OpenMP barriers cost). Shard
  gradients are summed in a fixed order and each shard's dropout has its own seeded generator, so a
  seeded run stays reproducible. A batch with more than `SHARD_MAX_TOKENS` padded tokens per thread
  (1,024 in fp32: 8 rows of 512 tokens on 2 cores) is cut in more shards, a multiple of the threads,
  which take the next as they finish, the longest rows first. That halves the activation memory a
  thread holds at once, and with it the first step's page-fault time (on these VMs first-touched
  memory costs ~1 s/GiB of system time per thread): the bench's first step took 3.5-4.2 s instead of
  4.4-4.9, while the steps after it measured 0.96-1.07x by length with 2-row shards (in-process
  A/Bs); the whole fp32 bench 1.045x. Under bf16 autocast (activations half the bytes) the cap is
  twice that: 2-row shards ran slower there (bench 0.87x).
- `fuse_lora_linears`, `fuse_rms_norms`, `fuse_rotary`, `_SumCrossEntropy`: on a CPU a step's
  non-GEMM time is dozens of small elementwise passes over the activations, each with its autograd
  node. These autograd Functions compute the same maths in fewer passes with hand-written backwards:
  per 4x158-token shard, LoRA layer 7.0 -> 5.9 ms, RMSNorm 1.8 -> 0.9 ms, rotary 3.6 -> 1.9 ms,
  cross-entropy 8.1 -> 5.4 ms (forward + backward, one thread); +10% end to end on the fp32 bench.
  Each falls back to the library's own forward for whatever it does not cover. The rotary embedding
  writes q and k contiguous per head (the attention's reshape is then a view, not a copy) and their
  gradients in the layout of its inputs (the projections' outputs, transposed: views on the way back).
  The RMSNorm patch is per module: train.py loads CPU models with transformers 5's hub kernels off,
  since re-kernelizing at a train()/eval() switch puts the library's forward back. Tried and not kept:
  a fused SwiGLU MLP with one gate+up GEMM (2%), matmul attention instead of torch's flash kernel
  (slower from 64 tokens up), `torch.compile` of the decoder (8% for a 37 s compile), huge pages
  (then; train.py has since asked torch's allocator for them, which the whole-run A/Bs found faster).
- `fuse_swiglu`: the SwiGLU MLP's `silu(gate) * up` by cpu_kernels.py's compiled kernels (fp32, one
  intra-op thread, as each shard thread has on 2 cores): one pass each way instead of two forward and
  three backward, silu's output not kept; a shard's step 1.01x (in-process A/B, 330 and 500 tokens).
- `fuse_attention`: causal attention in blocks of query rows with the probabilities kept for
  backward (`_BlockCausalAttention`) instead of torch's CPU flash kernel, for training steps with
  no mask tensor: +3-6% end to end on the fp32 bench (AMD EPYC, AVX2), more at long sequences. Under
  bf16 autocast it runs in bf16 (AMX or AVX512-BF16 GEMMs): 1.5-2.8x faster than the flash kernel's
  bf16 forward+backward at 512-160 tokens (Intel Xeon, AMX, one thread), where that kernel was a
  quarter of a bf16 step. Scores are rounded to bf16 before the softmax, as transformers' eager
  attention rounds them, and dk/dv add up their blocks in bf16: against fp32 it errs ~1.2-1.4x as
  much as the flash kernel's bf16 result (tested).
- The dropout masks are uint8 and applied by multiplying (`FastDropout.keep_mask`): on AVX2 a bool
  comparison and `torch.where` were a third of the LoRA layer's non-GEMM time.
- `use_onednn_linears`: torch's fp32 GEMM is MKL's sgemm, which on an AMD CPU with AVX-512 (Zen 4)
  runs a non-AVX-512 path; oneDNN's matmul, which dispatches on the instruction set alone, ran the
  step's frozen-weight GEMMs (forward and input gradient, 75-80% of an fp32 step) 1.08-1.37x faster
  there, +17-24% end to end on the fp32 bench. Chosen by `onednn_linear_preferred` (AMD + AVX-512),
  unless mkl_dispatch.py made MKL itself run its AVX-512 kernels (train.py loads it first): then
  MKL's GEMMs were as fast and the attention's and LoRA's batched/small GEMMs faster too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from cpu_kernels import library as _kernels  # a module global: tests and the profile swap it
from mkl_dispatch import active as mkl_intel_kernels_on_amd
from mkl_dispatch import cpuinfo as _cpuinfo

IGNORE_INDEX = -100
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
# Families whose causal-LM head is exactly `lm_head(base_model(...).last_hidden_state)`: no logit
# soft-capping or scaling between the two (those models keep the plain `model(**batch).loss` path).
PLAIN_HEAD_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi3"})


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX): there, bf16 autocast
    runs matmuls ~4x faster than fp32; elsewhere oneDNN emulates bf16 and it is slower."""
    flags = set(_cpuinfo().get("flags", "").split())
    return bool({"avx512_bf16", "amx_bf16"} & flags) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear_preferred() -> bool:
    """Whether fp32 linear layers are faster through oneDNN's matmul than through torch's GEMM (MKL's
    sgemm) on this CPU: on AMD CPUs with AVX-512, where MKL does not take its AVX-512 code path
    (oneDNN, which dispatches on the instruction set alone, was 1.08-1.37x faster on every GEMM shape
    of a training step on a Zen 4 EPYC, one thread), unless `mkl_dispatch.load()` made MKL take it in
    this process: then MKL was as fast or faster, with no kernel to prepare for each new row count."""
    info = _cpuinfo()
    return (info.get("vendor_id") == "AuthenticAMD" and "avx512f" in info.get("flags", "").split()
            and onednn_linear_available() and not mkl_intel_kernels_on_amd())


def autocast(device_type: str, bf16: bool) -> Any:
    """bf16 autocast when asked (thread-local: each shard thread enters its own)."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)


def tune_allocator() -> bool:
    """Keep freed activation memory in the process (glibc only; elsewhere nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and friends have no mallopt
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    return mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, drop: FastDropout, scale: float) -> torch.Tensor:
        masked, keep = drop.masked(x)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return masked.mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.mul(grad, keep).mul_(ctx.scale), None, None


_shard = threading.local()  # .generator: the random generator of the shard this thread is running


class FastDropout(torch.nn.Module):
    """`nn.Dropout(p)` with a cheaper random mask (see the module docstring)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self._drop_below = round(p * 65536)  # keep an element when its 16-bit draw (0..65535) is >= this
        self._threshold = self._drop_below - 32768  # the same for a signed (int16) draw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        out: torch.Tensor = _MaskedScale.apply(x, self, self.scale)
        return out

    @property
    def scale(self) -> float:
        return 1.0 / (1.0 - self.p)

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """A 0/1 uint8 mask shaped like `x`: 1 where an element is kept (16 random bits each).

        uint8, not bool, and applied by multiplying: on an AVX2 CPU, torch's comparison into a bool
        tensor and `torch.where` on one run ~5x slower than the same comparison written into a uint8
        tensor and a multiply by it (84 and 187 us against 417 and 780 us for 1072 x 512 elements);
        a dropped element becomes +-0 either way."""
        n = x.numel()
        draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
        draws.random_(-(2**63), None, generator=getattr(_shard, "generator", None))
        keep = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
        return torch.ge(draws.view(torch.int16)[:n].view(x.shape), self._threshold, out=keep)

    def masked(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(`x` times a new keep mask, the mask): in one pass by cpu_kernels' compiled kernel where it
        applies (`_one_thread_fp32`; each element's 16 bits from a counter-based hash keyed by one
        64-bit draw of the shard's generator), otherwise `keep_mask` and a multiply."""
        lib = _kernels() if _one_thread_fp32(x) and x.is_contiguous() else None
        if lib is None:
            keep = self.keep_mask(x)
            return torch.mul(x, keep), keep
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=getattr(_shard, "generator", None)))
        out, keep = torch.empty_like(x), torch.empty(x.shape, dtype=torch.uint8)
        lib.llmtuner_dropout(x.data_ptr(), out.data_ptr(), keep.data_ptr(), x.numel(), seed, self._drop_below)
        return out, keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _one_thread_fp32(x: torch.Tensor) -> bool:
    """Whether cpu_kernels' single-threaded kernels should take `x`: fp32 on a CPU, not under autocast,
    with one intra-op thread (each of ShardedBackward's shard threads on 2 cores, or a 1-core run;
    with more, torch's own ops split across them)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and torch.get_num_threads() == 1)


def use_fast_lora_dropout(model: torch.nn.Module) -> int:
    """Swap every LoRA dropout (peft's `lora_dropout` ModuleDicts) for FastDropout; returns how many."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, layer in list(dropouts.items()):
            if isinstance(layer, torch.nn.Dropout) and layer.p > 0:
                dropouts[name] = FastDropout(layer.p)
                swapped += 1
    return swapped


def _onednn_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`x @ w.T + bias` by oneDNN's matmul (fp32 stays IEEE fp32; `w` may be a transposed view).

    From the plain weights: prepacking them in oneDNN's blocked layout made the GEMMs 5-16% faster
    alone but the bench only ~2% (within its noise), for two more copies of every frozen weight
    that peft's merge (which writes through `.data`, unseen by version counters) would leave stale."""
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")
    return out


class _OneDnnLinear(torch.autograd.Function):
    """`x W^T + b` for a frozen W and b, forward and input gradient (`g W`) by oneDNN's matmul."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(w)
        return _onednn_linear(x, w, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (w,) = ctx.saved_tensors
        return _onednn_linear(grad, w.t(), None), None, None


def _onednn_linear_forward(linear: torch.nn.Linear, original: Any, x: torch.Tensor) -> torch.Tensor:
    w, bias = linear.weight, linear.bias
    frozen_fp32 = w.dtype == torch.float32 and not w.requires_grad and (
        bias is None or (bias.dtype == torch.float32 and not bias.requires_grad))
    if (not frozen_fp32 or x.device.type != "cpu" or x.dtype != torch.float32 or x.numel() == 0
            or torch.is_autocast_enabled("cpu")):
        return original(x)  # type: ignore[no-any-return]
    out: torch.Tensor = _OneDnnLinear.apply(x, w, bias)
    return out


def use_onednn_linears(model: torch.nn.Module) -> int:
    """Route every plain `nn.Linear` of `model` (the MLP's, the output head, the base layers under
    LoRA) through oneDNN's matmul while its weights are frozen fp32 and it runs on a CPU without
    autocast (see `onednn_linear_preferred`); anything else (a trained weight, bf16, CUDA) keeps the
    layer's own forward. Returns how many layers were routed; 0 where this torch has no oneDNN linear."""
    if not onednn_linear_available():
        return 0
    routed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            routed += _patch_forward(module, _onednn_linear_forward)
            module.onednn_linear = True  # type: ignore[assignment] # read by _fused_lora_forward, labelled_loss
    return routed


class _FusedLoraLinear(torch.autograd.Function):
    """`x W^T + b + alpha * (keep * x) A^T B^T` with W and b frozen and keep a 0/1 mask, in `dtype`.

    What peft's LoRA layer computes (alpha = LoRA scaling / (1 - dropout p): the dropout's scale
    folded into the low-rank product), in fewer passes over the activations: the dropout is one
    multiply by its uint8 mask, and the scaled low-rank product is added inside the second GEMM
    (`addmm_`) instead of by a separate multiply and add, forward and backward. With `onednn` (fp32
    only) the GEMMs with W run in oneDNN's matmul (`use_onednn_linears`).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, drop: FastDropout | None, a: torch.Tensor, b: torch.Tensor,
                w: torch.Tensor, bias: torch.Tensor | None, alpha: float, dtype: torch.dtype,
                onednn: bool = False) -> torch.Tensor:
        shape = x.shape
        onednn = onednn and dtype == torch.float32 and w.dtype == torch.float32
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, shape[-1]).to(dtype)
            a, b, w = a.to(dtype), b.to(dtype), w.to(dtype)
            xm, keep = (x2, None) if drop is None else drop.masked(x2)
            h = xm @ a.t()
            if onednn:
                y = _onednn_linear(x2, w, None if bias is None else bias.to(dtype))
            else:
                y = x2 @ w.t() if bias is None else torch.addmm(bias.to(dtype), x2, w.t())
            y.addmm_(h, b.t(), alpha=alpha)
        ctx.save_for_backward(xm, h, keep, a, b, w)
        ctx.alpha, ctx.x_dtype, ctx.onednn = alpha, x.dtype, onednn
        return y.view(*shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xm, h, keep, a, b, w = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(w.dtype)
        gt = (g @ b).mul_(ctx.alpha)  # [tokens, rank]
        grad_a = gt.t() @ xm if ctx.needs_input_grad[2] else None  # cast back to A's dtype by autograd
        grad_b = (g.t() @ h).mul_(ctx.alpha) if ctx.needs_input_grad[3] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            u = gt @ a
            if keep is not None:
                u.mul_(keep.view(u.shape))
            u = _onednn_linear(g, w.t(), None).add_(u) if ctx.onednn else u.addmm_(g, w)
            grad_x = u.view(*grad.shape[:-1], w.shape[1]).to(ctx.x_dtype)
        return grad_x, None, grad_a, grad_b, None, None, None, None, None


def _plain_lora(layer: Any) -> tuple[Any, Any, Any, Any, float] | None:
    """(A, B, base linear, dropout, scaling) when `layer` computes vanilla LoRA on a frozen nn.Linear
    with one active adapter and a dropout that FastDropout (or nothing) does; None otherwise."""
    active = getattr(layer, "active_adapters", None)
    if (not active or len(active) != 1 or layer.disable_adapters or layer.merged
            or getattr(layer, "fan_in_fan_out", False)):
        return None
    name = active[0]
    if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}):
        return None
    a, b, base, drop = layer.lora_A[name], layer.lora_B[name], layer.base_layer, layer.lora_dropout[name]
    if type(base) is not torch.nn.Linear or base.weight.requires_grad or \
            (base.bias is not None and base.bias.requires_grad):
        return None
    if type(a) is not torch.nn.Linear or type(b) is not torch.nn.Linear or a.bias is not None or b.bias is not None:
        return None
    if not (isinstance(drop, FastDropout | torch.nn.Identity) or (type(drop) is torch.nn.Dropout and drop.p == 0)):
        return None
    return a, b, base, drop, float(layer.scaling[name])


def _fused_lora_forward(layer: Any, original: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    plan = None if args or kwargs or x.device.type != "cpu" or not x.is_floating_point() else _plain_lora(layer)
    if plan is None:
        return original(x, *args, **kwargs)  # type: ignore[no-any-return]
    a, b, base, drop, alpha = plan
    dropping = isinstance(drop, FastDropout) and drop.training and drop.p > 0
    if dropping:
        alpha *= drop.scale
    dtype = _cpu_compute_dtype(base.weight.dtype)
    out: torch.Tensor = _FusedLoraLinear.apply(x, drop if dropping else None, a.weight, b.weight, base.weight,
                                               base.bias, alpha, dtype, getattr(base, "onednn_linear", False))
    return out


def fuse_lora_linears(model: torch.nn.Module) -> int:
    """Give every peft LoRA linear layer the fused forward of `_FusedLoraLinear` (CPU only: elsewhere,
    and whenever a layer is not plain LoRA at call time, peft's own forward runs); returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    return sum(_patch_forward(m, _fused_lora_forward) for m in model.modules()
               if type(m) is LoraLinear and _plain_lora(m) is not None)


def _patch_forward(module: torch.nn.Module, fused: Any) -> bool:
    """Make `fused(module, original_forward, *args)` the module's forward, once; False if already done."""
    if "forward" in vars(module):
        return False
    module.forward = functools.partial(fused, module, module.forward)  # type: ignore[method-assign]
    return True


class _RMSNorm(torch.autograd.Function):
    """`weight * x * rsqrt(mean(x^2) + eps)` over the last dimension, in fp32, in 3 passes forward
    and 4 backward (the weight's gradient only when it is trained) instead of about a dozen."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            r = torch.linalg.vector_norm(x, 2, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
            y = torch.mul(x, r).mul_(weight)
        ctx.save_for_backward(x, weight, r)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, r = ctx.saved_tensors
        gw = grad * weight
        dot = torch.linalg.vecdot(gw, x, dim=-1).unsqueeze(-1)
        grad_x = gw.mul_(r).addcmul_(x, r.pow(3).mul_(dot).div_(x.shape[-1]), value=-1)
        grad_w = (grad * x * r).sum(tuple(range(grad.dim() - 1))) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


# RMSNorm classes whose forward is exactly Llama's (`weight * (x * rsqrt(mean(x^2) + eps))`, in fp32).
LLAMA_RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm"})


def _fused_rms_norm_forward(norm: Any, original: Any, x: torch.Tensor) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype != torch.float32 or norm.weight.dtype != torch.float32:
        return original(x)  # type: ignore[no-any-return]
    out: torch.Tensor = _RMSNorm.apply(x, norm.weight, norm.variance_epsilon)
    return out


def fuse_rms_norms(model: torch.nn.Module) -> int:
    """Give every Llama-style RMSNorm the forward of `_RMSNorm` (fp32 on CPU; otherwise the model's own
    forward runs); returns how many."""
    return sum(_patch_forward(m, _fused_rms_norm_forward) for m in model.modules()
               if type(m).__name__ in LLAMA_RMS_NORMS)


class _SwiGLU(torch.autograd.Function):
    """`silu(gate) * up` by cpu_kernels' compiled kernels, one pass forward and one backward, keeping
    only `gate` and `up` (fp32, contiguous, the same shape; see cpu_kernels.py)."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(gate)
        _kernels().llmtuner_swiglu_forward(gate.data_ptr(), up.data_ptr(), out.data_ptr(), gate.numel())
        ctx.save_for_backward(gate, up)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        grad = grad.to(gate.dtype).contiguous()
        grad_gate, grad_up = torch.empty_like(gate), torch.empty_like(up)
        _kernels().llmtuner_swiglu_backward(grad.data_ptr(), gate.data_ptr(), up.data_ptr(), grad_gate.data_ptr(),
                                            grad_up.data_ptr(), gate.numel())
        return grad_gate, grad_up


# MLPs whose forward is exactly `down_proj(act_fn(gate_proj(x)) * up_proj(x))`, and the SiLUs act_fn may be
SWIGLU_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})
_SILUS = frozenset({"SiLUActivation", "SiLU"})


def _fused_swiglu_forward(mlp: Any, original: Any, x: torch.Tensor) -> torch.Tensor:
    if not _one_thread_fp32(x) or type(mlp.act_fn).__name__ not in _SILUS or _kernels() is None:
        return original(x)  # type: ignore[no-any-return]
    gate, up = mlp.gate_proj(x), mlp.up_proj(x)  # in the original's order (LoRA dropouts draw in it)
    if (gate.dtype == up.dtype == torch.float32 and gate.shape == up.shape and gate.is_contiguous()
            and up.is_contiguous()):
        hidden = _SwiGLU.apply(gate, up)
    else:
        hidden = mlp.act_fn(gate) * up
    out: torch.Tensor = mlp.down_proj(hidden)
    return out


def fuse_swiglu(model: torch.nn.Module) -> int:
    """Give every Llama-style SwiGLU MLP the forward of `_fused_swiglu_forward` (CPU, fp32, one intra-op
    thread; otherwise the model's own forward runs) when cpu_kernels' library is to be had; returns how many."""
    mlps = [m for m in model.modules()
            if type(m).__name__ in SWIGLU_MLPS and type(getattr(m, "act_fn", None)).__name__ in _SILUS]
    if not mlps or _kernels() is None:
        return 0
    return sum(_patch_forward(m, _fused_swiglu_forward) for m in mlps)


def _rotate_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    """out = x * cos + sign * rotate_half(x) * sin, with rotate_half(x) = cat(-x2, x1), in 4 half-size ops."""
    h = x.shape[-1] // 2
    x1, x2, o1, o2 = x[..., :h], x[..., h:], out[..., :h], out[..., h:]
    torch.mul(x1, cos[..., :h], out=o1).addcmul_(x2, sin[..., :h], value=-sign)
    torch.mul(x2, cos[..., h:], out=o2).addcmul_(x1, sin[..., h:], value=sign)
    return out


def _dim_order(x: torch.Tensor) -> list[int]:
    """`x`'s dimensions from the outermost in memory to the innermost (by stride; ties keep their order)."""
    return sorted(range(x.dim()), key=lambda d: -x.stride(d))


def _empty_in_order(like: torch.Tensor, order: list[int]) -> torch.Tensor:
    """An empty tensor shaped and typed like `like`, dense in memory with its dimensions laid out in `order`."""
    out = torch.empty([like.shape[d] for d in order], dtype=like.dtype, device=like.device)
    return out.permute(sorted(range(len(order)), key=order.__getitem__))


class _Rotary(torch.autograd.Function):
    """Llama's `apply_rotary_pos_emb` for q and k (dtype promoted with cos/sin, as `q * cos` is).
    Backward is the inverse rotation: g1 * cos1 + g2 * sin2, g2 * cos2 - g1 * sin1."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(cos, sin)
        ctx.dtypes = q.dtype, k.dtype
        ctx.orders = _dim_order(q), _dim_order(k)
        # Written contiguous (batch, heads, length, head dim): the attention's reshape of q and k to
        # (batch * heads, length, head dim) is then a view, not a copy of each.
        out = [_rotate_into(torch.empty(x.shape, dtype=torch.promote_types(x.dtype, cos.dtype), device=x.device),
                            x, cos, sin, 1.0) for x in (q, k)]
        return out[0], out[1]

    @staticmethod
    def backward(ctx: Any, gq: torch.Tensor, gk: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        cos, sin = ctx.saved_tensors
        h = cos.shape[-1] // 2
        # the inverse rotation: swap the halves of sin so that x1 pairs with sin1 and x2 with sin2
        sin_swapped = torch.cat((sin[..., h:], sin[..., :h]), -1)
        # Each gradient in its input's memory layout (the projection's (batch, length, heads, head dim)
        # transposed): the way back to the projection's output is then views, not a copy of each.
        grads = [None if g is None else _rotate_into(_empty_in_order(g, order), g, cos, sin_swapped, -1.0).to(dt)
                 for g, dt, order in zip((gq, gk), ctx.dtypes, ctx.orders, strict=True)]
        return grads[0], grads[1], None, None


_ROTARY_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3"})  # Llama's rotate-half RoPE on the whole head
_original_rotary: dict[str, Any] = {}


def _fused_rotary(module_name: str, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  unsqueeze_dim: int = 1, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if kwargs or q.device.type != "cpu" or q.shape[-1] != cos.shape[-1] or q.shape[-1] % 2:
        return _original_rotary[module_name](q, k, cos, sin, unsqueeze_dim=unsqueeze_dim, **kwargs)  # type: ignore[no-any-return]
    out: tuple[torch.Tensor, torch.Tensor] = _Rotary.apply(q, k, cos.unsqueeze(unsqueeze_dim),
                                                           sin.unsqueeze(unsqueeze_dim))
    return out


def fuse_rotary(model: torch.nn.Module) -> bool:
    """Route the rotary embedding of this model's family (Llama-style ones) through `_Rotary` on CPU.

    The function is looked up in the family's modeling module at every call, so it is replaced
    there, for the whole process; CUDA tensors and anything unusual still go to the original."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or config.model_type not in _ROTARY_FAMILIES:
        return False
    attention = next((m for m in base.modules() if type(m).__name__.endswith("Attention")), None)
    module = sys.modules.get(type(attention).__module__) if attention is not None else None
    if module is None or not callable(getattr(module, "apply_rotary_pos_emb", None)):
        return False
    name = module.__name__
    if name not in _original_rotary:
        _original_rotary[name] = module.apply_rotary_pos_emb
        module.apply_rotary_pos_emb = functools.partial(_fused_rotary, name)
    return True


def unfuse_rotary() -> None:
    """Put the original rotary functions back (tests compare against them)."""
    for name, original in _original_rotary.items():
        module = sys.modules.get(name)
        if module is not None:
            module.apply_rotary_pos_emb = original
    _original_rotary.clear()


_ATTENTION_BLOCK = 64  # query rows per block: 32 and 64 measured alike up to 268 tokens, 64 faster at 512
_ATTENTION_SAVED_MAX = 128 * 1024 * 1024  # bytes of probabilities one call may keep for backward
_causal_masks: dict[int, torch.Tensor] = {}


def _upper_triangle(n: int) -> torch.Tensor:
    mask = _causal_masks.get(n)
    if mask is None:
        mask = _causal_masks[n] = torch.ones(n, n, dtype=torch.bool).triu_(1)
    return mask


_ATTENTION_GROUP_BYTES = 512 * 1024  # one head group's K (or V): half of a Zen 4 core's 1 MiB L2


def _head_group(heads: int, length: int, dim: int, dtype: torch.dtype) -> int:
    """Heads (of batch*heads) taken together by `_BlockCausalAttention`: in fp32 the largest power of
    two whose keys fit in `_ATTENTION_GROUP_BYTES` (at least 1, at most all); in bf16 all of them:
    its GEMMs are fast enough that more, smaller calls cost more than the cache saves (grouped
    heads measured 0.58-1.12x there, one thread)."""
    if dtype != torch.float32:
        return heads
    group = 1
    while group < heads and 2 * group * length * dim * dtype.itemsize <= _ATTENTION_GROUP_BYTES:
        group *= 2
    return min(group, heads)


class _BlockCausalAttention(torch.autograd.Function):
    """Causal softmax attention of [batch*heads, L, head_dim] tensors, one block of query rows at a time.

    Each block of queries is multiplied with the prefix of the keys it may see (the upper triangle
    beyond its own block is never computed), and its softmax probabilities are kept for backward,
    which is then four batched GEMMs and one softmax backward per block with nothing recomputed.
    torch's CPU flash kernel recomputes the probabilities in backward and runs its small GEMMs at
    about a third of the matmul peak; this is 20-35% faster forward+backward at 158-512 tokens
    (one thread, 4 x 8 heads x 64 dims), at the price of keeping ~L^2/2 probabilities per head.
    The heads go a group at a time (`_head_group`), all blocks of one group before the next, so the
    group's keys, values and scores stay in the core's L2 cache across its blocks: in fp32
    1.02-1.24x faster forward+backward than all 32 heads of a 4-row shard at once (one thread,
    128-512 tokens, in-process A/B), where each block's GEMMs had streamed every head's key prefix
    from L3.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        heads, length, dim = q.shape
        qs = q if scale == 1 else q * scale
        out = torch.empty_like(q)
        group = _head_group(heads, length, dim, q.dtype)
        probs = []
        for h in range(0, heads, group):
            qg, kt, vg, og = qs[h:h + group], k[h:h + group].transpose(1, 2), v[h:h + group], out[h:h + group]
            for start in range(0, length, _ATTENTION_BLOCK):
                end = min(start + _ATTENTION_BLOCK, length)
                scores = torch.bmm(qg[:, start:end], kt[:, :, :end])
                scores[:, :, start:end].masked_fill_(_upper_triangle(end - start), float("-inf"))
                p = torch.softmax(scores, -1)
                torch.bmm(p, vg[:, :end], out=og[:, start:end])
                probs.append(p)
        ctx.save_for_backward(qs, k, v, *probs)
        ctx.scale, ctx.group = scale, group
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        qs, k, v, *probs = ctx.saved_tensors
        heads, length, _ = qs.shape
        grad = grad.contiguous()
        dq, dk, dv = torch.empty_like(qs), torch.zeros_like(k), torch.zeros_like(v)
        blocks = -(-length // _ATTENTION_BLOCK)
        for n, h in enumerate(range(0, heads, ctx.group)):
            heads_in = slice(h, h + ctx.group)
            qg, kg, vt, gg = qs[heads_in], k[heads_in], v[heads_in].transpose(1, 2), grad[heads_in]
            dqg, dkg, dvg = dq[heads_in], dk[heads_in], dv[heads_in]
            for i, p in enumerate(probs[n * blocks:(n + 1) * blocks]):
                start = i * _ATTENTION_BLOCK
                end = start + p.shape[1]
                g = gg[:, start:end]
                dvg[:, :end].baddbmm_(p.transpose(1, 2), g)
                ds = torch._softmax_backward_data(torch.bmm(g, vt[:, :, :end]), p, -1, p.dtype)
                dq_block = torch.bmm(ds, kg[:, :end], out=dqg[:, start:end])
                if ctx.scale != 1:
                    dq_block.mul_(ctx.scale)
                dkg[:, :end].baddbmm_(ds.transpose(1, 2), qg[:, start:end])  # dS^T (q * scale)
        return dq, dk, dv, None


# keyword arguments of an attention call that do not change its result
_ATTENTION_KWARGS_IGNORED = frozenset({"position_ids", "cache_position", "use_cache", "output_attentions"})
_original_sdpa: list[Any] = []


def _block_attention_applies(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float, is_causal: bool | None,
                             kwargs: dict[str, Any]) -> bool:
    length = query.shape[2]
    if attention_mask is not None or dropout or not torch.is_grad_enabled() or length < 2:
        return False
    if not (is_causal if is_causal is not None else getattr(module, "is_causal", False)):
        return False
    if any(v is not None and k not in _ATTENTION_KWARGS_IGNORED and not (k == "sliding_window" and v >= length)
           for k, v in kwargs.items()) or kwargs.get("output_attentions"):
        return False
    tensors = (query, key, value)
    dtype = _attention_dtype(query)
    if dtype not in (torch.float32, torch.bfloat16) or any(
            t.device.type != "cpu" or t.dtype not in (dtype, torch.float32) for t in tensors):
        return False
    if not torch.is_autocast_enabled("cpu") and any(t.dtype != dtype for t in tensors):
        return False  # mixed dtypes with no autocast to reconcile them: sdpa says what it makes of that
    if key.shape[2] != length or query.shape[-1] != key.shape[-1] or key.shape[-1] != value.shape[-1]:
        return False
    if query.shape[1] % key.shape[1] or key.shape[1] != value.shape[1]:
        return False
    saved = query.shape[0] * query.shape[1] * (length * (length + _ATTENTION_BLOCK) // 2) * dtype.itemsize
    return saved <= _ATTENTION_SAVED_MAX


def _attention_dtype(query: torch.Tensor) -> torch.dtype:
    """The dtype sdpa computes in: under CPU autocast its lower precision (sdpa is on its list), else the query's."""
    return _cpu_compute_dtype(query.dtype)


def _cpu_compute_dtype(default: torch.dtype) -> torch.dtype:
    """CPU autocast's lower precision while it is on (the matmuls' dtype), else `default`."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else default


def causal_attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' "sdpa" attention function, with `_BlockCausalAttention` for what it covers: CPU
    training in fp32 or under bf16 autocast (then in bf16, as sdpa under autocast), causal, no mask
    tensor (right padding, see `_causal_mask_or_none`), no attention dropout, grouped-query heads
    repeated as transformers' own sdpa path repeats them; the original otherwise."""
    if not _block_attention_applies(module, query, key, value, attention_mask, dropout, is_causal, kwargs):
        return _original_sdpa[0](module, query, key, value, attention_mask, dropout=dropout,  # type: ignore[no-any-return]
                                 scaling=scaling, is_causal=is_causal, **kwargs)
    from transformers.integrations.sdpa_attention import repeat_kv

    batch, heads, length, dim = query.shape
    dtype, scale = _attention_dtype(query), dim**-0.5 if scaling is None else scaling
    with torch.autocast("cpu", enabled=False):
        if query.dtype != dtype:  # fp32 queries (rotary's output) under bf16 autocast: scaled before rounding
            query, scale = query * scale, 1.0
        key, value = repeat_kv(key, heads // key.shape[1]), repeat_kv(value, heads // value.shape[1])
        q, k, v = (t.reshape(batch * heads, length, dim) if t.dtype == dtype else  # one copy either way
                   t.to(dtype, memory_format=torch.contiguous_format).view(batch * heads, length, dim)
                   for t in (query, key, value))
        out: torch.Tensor = _BlockCausalAttention.apply(q, k, v, scale)
    return out.view(batch, heads, length, dim).transpose(1, 2).contiguous(), None


def fuse_attention(model: torch.nn.Module) -> bool:
    """Route this process's transformers "sdpa" attention through `causal_attention_forward` when
    `model` uses it; like `fuse_rotary`, process-wide, falling back to the original for anything else."""
    from transformers import AttentionInterface

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or config.model_type not in _ROTARY_FAMILIES or config._attn_implementation != "sdpa":
        return False  # families whose attention call is known to be plain scaled causal softmax attention
    if not _original_sdpa:
        _original_sdpa.append(AttentionInterface._global_mapping["sdpa"])
        AttentionInterface.register("sdpa", causal_attention_forward)
    return True


def unfuse_attention() -> None:
    """Put transformers' own "sdpa" attention function back (tests compare against it)."""
    from transformers import AttentionInterface

    if _original_sdpa:
        AttentionInterface.register("sdpa", _original_sdpa.pop())


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


class _SumCrossEntropy(torch.autograd.Function):
    """`F.cross_entropy(logits, targets, reduction="sum")` (no ignored targets), its backward one
    in-place pass over the saved log-probabilities (softmax minus one-hot) instead of a zero-filled
    gradient, a scatter and a log-softmax backward."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, -1)
        ctx.save_for_backward(logp, targets)
        return logp.gather(1, targets[:, None]).sum().neg()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logp, targets = ctx.saved_tensors
        out = logp.exp()
        out[torch.arange(len(targets), device=out.device), targets] -= 1
        return out.mul_(grad), None


_HEAD_CHUNK_ROWS = 128  # rows of logits at a time: best of 32-512 at vocabularies of 8k and 32k (fp32 and bf16)


class _HeadCrossEntropy(torch.autograd.Function):
    """`F.cross_entropy(hidden @ W^T + b, targets, reduction="sum")` for a frozen output head, 128
    rows at a time, in `dtype` (the autocast dtype, or the weight's).

    Each chunk's logits are computed, log-softmaxed and, when a gradient is wanted, turned into
    softmax minus one-hot and multiplied back through W while they are still in cache; backward only
    scales that saved [rows, hidden] gradient. No [rows, vocab] logits, log-probabilities or logit
    gradient is ever kept or allocated whole: one chunk at a time, 128 x vocab values (4 MiB at 8k).
    The same per-value operations as `head(hidden).float()` then `_SumCrossEntropy`: logits rounded to
    `dtype` by the GEMM, log-softmax in fp32. (Liger-Kernel's fused linear cross-entropy does this on GPUs.)
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, dtype: torch.dtype, onednn: bool = False) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            x, w = hidden.to(dtype), weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            grad = torch.empty_like(x) if ctx.needs_input_grad[0] else None
            loss = torch.zeros((), dtype=torch.float32, device=x.device)
            rows = torch.arange(min(_HEAD_CHUNK_ROWS, len(x)), device=x.device)
            for start in range(0, len(x), _HEAD_CHUNK_ROWS):
                xs, ts = x[start:start + _HEAD_CHUNK_ROWS], targets[start:start + _HEAD_CHUNK_ROWS]
                if onednn:
                    logits = _onednn_linear(xs, w, b)
                else:
                    logits = xs @ w.t() if b is None else torch.addmm(b, xs, w.t())
                logp = torch.log_softmax(logits.float(), -1)
                loss.sub_(logp.gather(1, ts[:, None]).sum())
                if grad is not None:
                    p = logp.exp_()
                    p[rows[:len(ts)], ts] -= 1
                    p = p.to(dtype)
                    if onednn:
                        grad[start:start + len(ts)] = _onednn_linear(p, w.t(), None)
                    else:
                        torch.mm(p, w, out=grad[start:start + len(ts)])
        ctx.save_for_backward(grad)
        ctx.hidden_dtype = hidden.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad.to(ctx.hidden_dtype) * grad_loss, None, None, None, None, None


def _fused_head_applies(head: Any, hidden: torch.Tensor) -> bool:
    """A plain frozen `nn.Linear` head on a CPU (a trained head, as in full fine-tuning, keeps the plain path)."""
    return (type(head) is torch.nn.Linear and hidden.device.type == "cpu" and not head.weight.requires_grad
            and (head.bias is None or not head.bias.requires_grad) and hidden.is_floating_point())


def _causal_mask_or_none(mask: torch.Tensor | None) -> torch.Tensor | None:
    """None when every row of `mask` is ones then zeros (right padding), else `mask`.

    With right padding the causal mask alone already hides the padding from every real token (it
    comes after them), so the model can run its causal attention kernel (`is_causal`, no mask
    tensor to build or read: 4-8% faster attention on a CPU) with the same outputs and gradients at
    every real position; padded positions have no label. Left or inner padding keeps the mask."""
    if mask is None or mask.dim() != 2 or mask.device.type != "cpu":  # on a GPU the check would sync
        return mask
    lengths = mask.sum(1, keepdim=True)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None] < lengths
    return None if bool((lengths > 0).all()) and torch.equal(mask.bool(), prefix) else mask


def labelled_loss(parts: tuple[Any, Any], batch: dict[str, torch.Tensor],
                  num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """Next-token cross-entropy over the labelled positions, reduced as transformers reduces it:
    the sum over `num_items_in_batch` when given (gradient accumulation), else the mean."""
    decoder, head = parts
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=_causal_mask_or_none(batch.get("attention_mask")),
                     use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    where = targets != IGNORE_INDEX
    rows = hidden[:, :-1][where]
    loss: torch.Tensor
    if _fused_head_applies(head, rows):
        dtype = _cpu_compute_dtype(head.weight.dtype)
        loss = _HeadCrossEntropy.apply(rows, head.weight, head.bias, targets[where], dtype,
                                       getattr(head, "onednn_linear", False) and dtype == torch.float32)
    elif rows.device.type == "cpu":
        loss = _SumCrossEntropy.apply(head(rows).float(), targets[where])
    else:
        loss = F.cross_entropy(head(rows).float(), targets[where], reduction="sum")
    if num_items_in_batch is None:
        return loss / where.sum().clamp(min=1)
    return loss / num_items_in_batch


# padded tokens per shard beyond which a batch is cut in more shards than threads (ShardedBackward.shards)
SHARD_MAX_TOKENS = 1024


def shard_max_tokens(bf16: bool) -> int:
    """ShardedBackward's cap on a shard's padded tokens: `SHARD_MAX_TOKENS` in fp32, twice that under
    bf16 autocast, whose activations take about half the bytes (and where 2-row shards ran slower)."""
    return SHARD_MAX_TOKENS * (2 if bf16 else 1)


class ShardedBackward:
    """Forward and backward of a batch as `workers` shards on as many threads (see the module docstring).

    Only for models whose randomness all goes through FastDropout (`usable` says so): torch's own
    dropout would draw from the shared generator in whatever order the threads run."""

    def __init__(self, parts: tuple[Any, Any], params: list[torch.Tensor], workers: int) -> None:
        self.parts, self.params, self.workers = parts, params, workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="shard")

    @staticmethod
    def usable(model: torch.nn.Module) -> bool:
        config = getattr(model, "config", None)
        if any(getattr(config, k, 0) for k in ("attention_dropout", "attn_pdrop", "hidden_dropout")):
            return False
        return not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())

    def __call__(self, batch: dict[str, torch.Tensor], num_items: torch.Tensor | int,
                 bf16: bool = False) -> torch.Tensor:
        """Accumulates the batch's gradients into `.grad` as `labelled_loss(...).backward()` would; returns the loss."""
        shards = self.shards(batch, self.workers, shard_max_tokens(bf16))
        seeds = torch.randint(0, 2**62, (len(shards),)).tolist()  # from the seeded global generator
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads // min(self.workers, len(shards))))
        try:
            results = list(self._pool.map(self._run, shards, seeds, [num_items] * len(shards),
                                          [bf16] * len(shards)))
        finally:
            torch.set_num_threads(threads)
        for i, p in enumerate(self.params):
            grads = [r[1][i] for r in results if r[1][i] is not None]
            if grads:
                total = torch.stack(grads).sum(0) if len(grads) > 1 else grads[0]
                p.grad = total if p.grad is None else p.grad.add_(total)
        return torch.stack([r[0] for r in results]).sum()

    @classmethod
    def shards(cls, batch: dict[str, torch.Tensor], workers: int,
               max_tokens: int = SHARD_MAX_TOKENS) -> list[dict[str, torch.Tensor]]:
        """The batch's rows, longest first, in shards of about equal row counts, each cut to its own
        longest row: `workers` shards, or a multiple of `workers` such that no shard holds more than
        `max_tokens` padded tokens where rows allow (a shard has one row at least).

        The pool's threads take the shards in this order, each the next as it finishes its own (the
        longest first, so the threads finish close together). Capping a shard's tokens caps the
        activation memory one shard thread holds at a time: that is what the first step of a run
        first touches (train.py's longest batch comes first), which on a VM costs more per byte
        than anything else in a step."""
        rows = batch["input_ids"].shape[0]
        mask = batch.get("attention_mask")
        if mask is not None and rows > 1:
            lengths = mask.sum(1)
            order = torch.sort(lengths, descending=True, stable=True).indices
            if not torch.equal(order, torch.arange(rows)):
                batch = {k: v[order] for k, v in batch.items()}
            width = int(lengths.max())
        else:
            width = batch["input_ids"].shape[1]
        per_shard = max(1, max_tokens // max(1, width))  # rows a shard may hold
        wanted = -(-rows // per_shard)
        count = min(rows, workers * max(1, -(-wanted // workers)))  # more shards never hold more rows
        bounds = [rows * i // count for i in range(count + 1)]
        return [cls._trimmed({k: v[a:b] for k, v in batch.items()})
                for a, b in zip(bounds, bounds[1:], strict=False) if b > a]

    @staticmethod
    def _trimmed(shard: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A right-padded shard cut to its own longest row."""
        mask = shard.get("attention_mask")
        if mask is None:
            return shard
        n = int(mask.sum(1).max())
        return {k: v[:, :n] for k, v in shard.items()} if n < mask.shape[1] else shard

    def _run(self, shard: dict[str, torch.Tensor], seed: int, num_items: torch.Tensor | int,
             bf16: bool) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
        torch.set_num_threads(max(1, torch.get_num_threads()))  # this thread takes the shard's thread count
        _shard.generator = torch.Generator().manual_seed(seed)
        try:
            with autocast("cpu", bf16):
                loss = labelled_loss(self.parts, shard, num_items)
            return loss.detach(), torch.autograd.grad(loss, self.params, allow_unused=True)
        finally:
            _shard.generator = None
