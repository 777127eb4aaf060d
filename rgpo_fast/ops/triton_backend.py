"""The Triton backend: the backend interface of ops/backends.py on top of rgpo_fast.kernels.

No maths here: argument plumbing to the launchers in kernels/linear_logprob.py and
kernels/policy_loss.py. Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1
(the Triton interpreter, used by the tests on machines without a GPU). `chunk_size` is the
torch backend's knob and is ignored: the kernels tile tokens and vocabulary themselves.
"""

from __future__ import annotations

import os

import torch

from rgpo_fast.algos.policy_loss import STAT_NAMES, LossConfig, TokenTerms
from rgpo_fast.kernels import linear_logprob as _lp
from rgpo_fast.kernels import policy_loss as _pl

NAME = "triton"
TRUNCATION = True  # per-row thresholds of a truncated sampler (ops/truncation.py)
ROUNDED_LOGITS = False  # fp32 accumulators of the tl.dot tiles

if tuple(_pl.KERNEL_STAT_NAMES) != tuple(STAT_NAMES):  # pragma: no cover - a coding error
    raise ImportError("kernels/policy_loss.py stat columns differ from algos STAT_NAMES")


def is_available(device: torch.device) -> bool:
    """CUDA devices; CPU devices only when the Triton interpreter is on."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "cpu":
        return os.environ.get("TRITON_INTERPRET") == "1"
    return False


def logprob_forward(hidden, weight, bias, targets, temperature, with_entropy, chunk_size=None,
                    threshold=None):
    """(N, H), (V, H), (V,)|None, (N,) -> logp (N,), lse (N,), entropy (N,)|None, fp32;
    `threshold` (N,): a truncated sampler's per-row cut (ops/truncation.py)."""
    return _lp.linear_logprob_forward(
        hidden, weight, bias, targets.contiguous(), temperature, with_entropy,
        threshold=threshold,
    )  # fmt: skip


def logprob_backward(
    hidden, weight, bias, targets, lse, entropy, temperature, g_logp, g_ent, needs,
    chunk_size=None, threshold=None,
):  # fmt: skip
    """Recompute each logits tile and chain the token gradients: (dh, dw, db)."""
    return _lp.linear_logprob_backward(
        hidden, weight, bias, targets.contiguous(), lse, entropy, temperature,
        g_logp.float().contiguous(), None if g_ent is None else g_ent.float().contiguous(),
        tuple(bool(x) for x in needs), threshold=threshold,
    )  # fmt: skip


def policy_loss_forward_backward(
    hidden, weight, bias, targets, terms: TokenTerms, cfg: LossConfig, needs,
    with_entropy=False, chunk_size=None,
):  # fmt: skip
    """Log-prob forward kernel -> policy-loss kernel -> log-prob backward kernel.

    The loss kernel's dL/dlogp is the upstream gradient of the log-prob backward, so the
    logits are computed twice (forward and the backward's recompute) and never stored.
    """
    targets = targets.contiguous()
    logp, lse, ent = _lp.linear_logprob_forward(
        hidden, weight, bias, targets, cfg.temperature, with_entropy
    )
    loss, stats, g = _pl.policy_loss_forward_backward(logp, terms, cfg, ent)
    dh = dw = db = None
    if any(needs):
        dh, dw, db = _lp.linear_logprob_backward(
            hidden, weight, bias, targets, lse, None, cfg.temperature, g, None,
            tuple(bool(x) for x in needs),
        )  # fmt: skip
    return loss, stats, dh, dw, db
