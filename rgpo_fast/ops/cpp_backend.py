"""The compiled backend ("cpp"): fused ops of the C++ extension rgpo_fast._C (csrc/).

The ops are registered with torch.library as `torch.ops.rgpo_fast.*` (schemas and CPU
kernels in csrc/bindings.cpp, CUDA kernels in the optional rgpo_fast._C_cuda). This module
loads the extension lazily, registers the fake (meta) kernels that let the ops trace under
torch.compile, and adapts them to the backend protocol of ops/backends.py. Semantics are
those of ops/torch_chunked.py (same chunking, dtypes and outputs).

When the extension is not built (RGPO_FAST_SKIP_CPP_BUILD=1, or a build without a compiler)
`is_available` is False, `impl="auto"` falls back to the PyTorch path, and a one-line notice
is logged the first time; `import rgpo_fast` never fails because of it.
"""

from __future__ import annotations

import importlib
import logging

import torch

from rgpo_fast.algos.policy_loss import KL_CODES, NUM_STATS, LossConfig, TokenTerms

NAME = "cpp"
TRUNCATION = True  # per-row thresholds of a truncated sampler (csrc/cpu/row_kernels.h)
ROUNDED_LOGITS = True  # the GEMM writes the input dtype (csrc/cpu/fused_ops.cpp)
EXTENSION = "rgpo_fast._C"
_log = logging.getLogger("rgpo_fast")
_state: dict = {"loaded": None, "error": None, "noticed": False}


def load_extension() -> bool:
    """Import rgpo_fast._C once (registering its ops and their fake kernels); True on success."""
    if _state["loaded"] is None:
        try:
            importlib.import_module(EXTENSION)
        except ImportError as exc:  # not built, or built against another torch
            _state["loaded"], _state["error"] = False, exc
        else:
            _register_fakes()
            _state["loaded"] = True
    if not _state["loaded"] and not _state["noticed"]:
        _state["noticed"] = True
        _log.warning(
            "rgpo_fast: C++ extension %s unavailable (%s); using the PyTorch path",
            EXTENSION,
            _state["error"],
        )
    return bool(_state["loaded"])


def is_available(device: torch.device) -> bool:
    return torch.device(device).type == "cpu" and load_extension()


def _ops():
    if not load_extension():
        raise RuntimeError(f"the C++ extension {EXTENSION} is not built: {_state['error']}")
    return torch.ops.rgpo_fast


# ---- fake (meta) kernels: output shapes/dtypes only, for FakeTensor / torch.compile ----

_F32 = torch.float32


def _fake_grads(hidden, weight, bias, need_hidden, need_weight, need_bias):
    dh = hidden.new_empty(hidden.shape if need_hidden else (0,))
    dw = weight.new_empty(weight.shape if need_weight else (0,))
    src = bias if bias is not None else weight
    db = src.new_empty((weight.shape[0],) if (need_bias and bias is not None) else (0,))
    return dh, dw, db


def _register_fakes() -> None:
    lib = "rgpo_fast::"

    @torch.library.register_fake(lib + "logprob_forward")
    def _(hidden, weight, bias, targets, temperature, with_entropy, chunk_size, threshold=None):
        n = hidden.shape[0]
        return (
            hidden.new_empty(n, dtype=_F32),
            hidden.new_empty(n, dtype=_F32),
            hidden.new_empty(n if with_entropy else 0, dtype=_F32),
        )

    @torch.library.register_fake(lib + "logprob_backward")
    def _(
        hidden,
        weight,
        bias,
        targets,
        lse,
        entropy,
        temperature,
        g_logp,
        g_ent,
        need_hidden,
        need_weight,
        need_bias,
        chunk_size,
        threshold=None,
    ):
        return _fake_grads(hidden, weight, bias, need_hidden, need_weight, need_bias)

    @torch.library.register_fake(lib + "token_loss")
    def _(
        logp,
        advantages,
        pg_weight,
        sft_weight,
        policy,
        offpolicy,
        old_logprobs,
        ref_logprobs,
        rollout_logprobs,
        entropy,
        clip_low,
        clip_high,
        clip_ratio_c,
        beta,
        kl_estimator,
        luffy_gamma,
        tis_cap,
    ):
        n = logp.shape[0]
        return (
            logp.new_empty(n, dtype=_F32),
            logp.new_empty(n, dtype=_F32),
            logp.new_empty(NUM_STATS, dtype=_F32),
        )

    @torch.library.register_fake(lib + "policy_loss_forward_backward")
    def _(
        hidden,
        weight,
        bias,
        targets,
        advantages,
        pg_weight,
        sft_weight,
        policy,
        offpolicy,
        old_logprobs,
        ref_logprobs,
        rollout_logprobs,
        clip_low,
        clip_high,
        clip_ratio_c,
        beta,
        kl_estimator,
        luffy_gamma,
        tis_cap,
        temperature,
        with_entropy,
        need_hidden,
        need_weight,
        need_bias,
        chunk_size,
    ):
        loss = hidden.new_empty((), dtype=_F32)
        stats = hidden.new_empty(NUM_STATS, dtype=_F32)
        return (
            loss,
            stats,
            *_fake_grads(hidden, weight, bias, need_hidden, need_weight, need_bias),
        )

    @torch.library.register_fake(lib + "pack_bf16")
    def _(tensors, offsets, total):
        return tensors[0].new_empty(total, dtype=torch.bfloat16)


# ---- the backend protocol (ops/backends.py) ----


def _chunk(chunk_size: int | None, hidden: torch.Tensor, weight: torch.Tensor) -> int:
    """Rows per logits block: the same auto rule as the PyTorch backend (one policy)."""
    from rgpo_fast.ops.torch_chunked import auto_chunk_size

    return int(chunk_size) if chunk_size else auto_chunk_size(hidden.shape[0], weight.shape[0])


def _none_if_empty(t: torch.Tensor, wanted: bool) -> torch.Tensor | None:
    return t if wanted else None


def logprob_forward(hidden, weight, bias, targets, temperature, with_entropy, chunk_size=None,
                    threshold=None):
    """(N, H), (V, H), (V,)|None, (N,) -> logp (N,), lse (N,), entropy (N,)|None, all fp32.
    `threshold` (N,) fp32: a truncated sampler's per-row cut (ops/truncation.py; the CUDA
    ops refuse it)."""
    logp, lse, ent = _ops().logprob_forward(
        hidden,
        weight,
        bias,
        targets,
        float(temperature),
        bool(with_entropy),
        _chunk(chunk_size, hidden, weight),
        threshold,
    )
    return logp, lse, (ent if with_entropy else None)


def logprob_backward(
    hidden,
    weight,
    bias,
    targets,
    lse,
    entropy,
    temperature,
    g_logp,
    g_ent,
    needs,
    chunk_size=None,
    threshold=None,
):
    """Recompute each logits chunk and chain the token gradients: (dh, dw, db)."""
    need_h, need_w, need_b = (bool(x) for x in needs)
    need_b = need_b and bias is not None
    dh, dw, db = _ops().logprob_backward(
        hidden,
        weight,
        bias,
        targets,
        lse,
        entropy if g_ent is not None else None,
        float(temperature),
        g_logp,
        g_ent,
        need_h,
        need_w,
        need_b,
        _chunk(chunk_size, hidden, weight),
        threshold,
    )
    return _none_if_empty(dh, need_h), _none_if_empty(dw, need_w), _none_if_empty(db, need_b)


def loss_args(terms: TokenTerms, cfg: LossConfig) -> tuple:
    """TokenTerms + LossConfig -> the per-token tensors and scalars of the op schemas."""
    return (
        terms.advantages,
        terms.pg_weight,
        terms.sft_weight,
        terms.policy,
        terms.offpolicy,
        terms.old_logprobs,
        terms.ref_logprobs,
        terms.rollout_logprobs,
    ), (
        float(cfg.clip_low),
        float(cfg.clip_high),
        None if cfg.clip_ratio_c is None else float(cfg.clip_ratio_c),
        float(cfg.beta),
        KL_CODES[cfg.kl_estimator],
        float(cfg.luffy_gamma),
        float(cfg.tis_cap),
    )


def token_loss_and_grad(logp, terms: TokenTerms, cfg: LossConfig, entropy=None):
    """The C++ per-token loss: same contract as algos.policy_loss.token_loss_and_grad."""
    tensors, scalars = loss_args(terms, cfg)
    return _ops().token_loss(logp.float().contiguous(), *tensors, entropy, *scalars)


def policy_loss_forward_backward(
    hidden,
    weight,
    bias,
    targets,
    terms: TokenTerms,
    cfg: LossConfig,
    needs,
    with_entropy=False,
    chunk_size=None,
):
    """Loss, stats and all gradients in ONE sweep of 3 matmuls per chunk (see csrc/cpu)."""
    need_h, need_w, need_b = (bool(x) for x in needs)
    need_b = need_b and bias is not None
    tensors, scalars = loss_args(terms, cfg)
    loss, stats, dh, dw, db = _ops().policy_loss_forward_backward(
        hidden,
        weight,
        bias,
        targets,
        *tensors,
        *scalars,
        float(cfg.temperature),
        bool(with_entropy),
        need_h,
        need_w,
        need_b,
        _chunk(chunk_size, hidden, weight),
    )
    return (
        loss,
        stats,
        _none_if_empty(dh, need_h),
        _none_if_empty(dw, need_w),
        _none_if_empty(db, need_b),
    )
