"""The update of one RL step: `ppo_epochs` passes over the rollout batch, each split into
`mini_batches` optimizer steps (verl's ppo_epochs / ppo_mini_batch_size, TRL's
num_iterations / steps_per_generation).

With one update per batch (the default) the policy that computes the loss is the one that
sampled, so the fused loss's old log-probs default to its own detached log-probs and the
ratio is exactly 1. With more than one update the old log-probs are computed once, before
the first update, so later updates see ratio = pi_theta / pi_old != 1 and the clip acts.

A mini-batch holds whole prompts (a group's advantages are computed over the whole group
beforehand, so splitting a group would be harmless for the loss, but keeping it whole keeps
a prompt's samples in one update, as verl and TRL do). Which mini-batch a prompt goes to
depends only on its index in the step's global prompt list, never on the number of ranks,
so data parallelism changes nothing but round-off (tests/test_distributed.py). Each
mini-batch's loss is normalised by its own global token / sequence counts
(update.backward_batch). The learning-rate schedule advances once per RL step.
"""

from __future__ import annotations

import math

import torch

from rgpo_fast.algos.aggregation import token_roles
from rgpo_fast.algos.policy_loss import LossConfig
from rgpo_fast.batch import TrainBatch
from rgpo_fast.trainer.distributed import DistInfo, all_reduce_max, all_reduce_sum
from rgpo_fast.trainer.nonfinite import NonFiniteGuard
from rgpo_fast.trainer.update import (
    RATIO_METRICS,
    SUM_METRICS,
    backward_batch,
    optimizer_step,
    policy_logprobs,
)


def mini_batch_rows(prompt_index: torch.Tensor, num_prompts: int, n: int) -> list[list[int]]:
    """Row indices of `n` mini-batches. `prompt_index` (B,) is each row's prompt in the
    step's global prompt list (the same numbering on every rank); prompt j goes to
    mini-batch floor((j mod P) * n / P), P = `num_prompts`: contiguous runs of the global
    list. Ranks draw strided shares of that list, so a mini-batch of at least as many
    prompts as ranks has rows on every rank (a rank without rows joins the collectives
    with a zero loss). Prompts beyond P (refills) wrap around."""
    if not 1 <= n <= num_prompts:
        raise ValueError(f"mini-batches must be in [1, {num_prompts}] (whole prompts), got {n}")
    which = prompt_index.long().remainder(num_prompts) * n // num_prompts  # (B,)
    return [torch.nonzero(which == k).flatten().tolist() for k in range(n)]


@torch.no_grad()
def policy_drift(policy: torch.nn.Module, batch: TrainBatch, micro: int,
                 info: DistInfo) -> dict[str, float]:
    """How far the updates moved the policy from the one that computed the old log-probs,
    over the batch's policy tokens: `ppo/approx_kl`, the k3 estimate of KL(old || new)
    ((r - 1) - log r with r = pi_new / pi_old, unbiased and >= 0 per token under samples
    of the old policy), and `ppo/ratio_max`, the largest r."""
    new = policy_logprobs(policy, batch, micro, info)
    _, _, pol = token_roles(batch.response_mask, batch.hint_mask, batch.sft_mask)
    log_r = (new - batch.old_logprobs).double()[pol]
    k3 = torch.expm1(log_r) - log_r
    g = all_reduce_sum(torch.stack([k3.sum(), torch.tensor(float(log_r.numel()),
                                                          dtype=torch.float64)]), info)
    r_max = float(log_r.max().exp()) if log_r.numel() else 0.0
    return {"ppo/approx_kl": float(g[0] / g[1].clamp(min=1)),
            "ppo/ratio_max": float(all_reduce_max(torch.tensor(r_max), info))}


def rl_update(policy: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: TrainBatch,
              config: LossConfig, *, micro: int, info: DistInfo, grad_clip: float,
              epochs: int = 1, mini_batches: int = 1, prompt_index: torch.Tensor | None = None,
              num_prompts: int | None = None, seed: int = 0,
              max_response_len: int | None = None, guard: NonFiniteGuard | None = None,
              step: int = 0) -> dict[str, float]:
    """Run the step's updates (module docstring) and return their metrics: loss terms and
    grad norm as means over updates, token counts of one pass, clip fractions and ratio mean
    over every update's policy tokens, and with more than one update `ppo/approx_kl` and
    `ppo/ratio_max` of the final policy against the old one. `prompt_index` (B,) numbers
    the rows' prompts in the step's global list (default: `batch.group_ids`); `num_prompts`
    is that list's length; `seed` (the same on every rank) orders the mini-batches of each
    pass. With a `guard` (trainer/nonfinite.py) an update with a non-finite loss or gradient
    norm stops the run or, within the guard's allowance (train.max_nonfinite_skips), is
    dropped: `nonfinite/skipped` counts those, the other metrics are over applied updates."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    updates = epochs * mini_batches
    if updates > 1 and batch.old_logprobs is None:
        batch.set_old_logprobs(policy_logprobs(policy, batch, micro, info))
    if mini_batches == 1:
        parts = [list(range(batch.batch_size))]
    else:
        index = batch.group_ids if prompt_index is None else prompt_index
        if num_prompts is None:
            raise ValueError("num_prompts is needed to split a batch into mini-batches")
        parts = mini_batch_rows(index, num_prompts, mini_batches)
    sizes = all_reduce_sum(torch.tensor([len(p) for p in parts], dtype=torch.float64), info)
    order = torch.Generator().manual_seed(seed)
    runs, skipped = [], 0
    for _ in range(epochs):
        for k in torch.randperm(len(parts), generator=order).tolist():
            if sizes[k] == 0:  # empty on every rank (prompts dropped): no optimizer step
                continue
            m = backward_batch(policy, batch.select(parts[k]), config, micro, info,
                               max_response_len=max_response_len, entropy=True)
            before = guard.skipped if guard is not None else 0
            m["grad_norm"] = optimizer_step(policy, optimizer, None, grad_clip, guard=guard,
                                            step=step, loss=m["loss/total"])
            if guard is not None and guard.skipped > before:
                skipped += 1
                continue
            runs.append(m)
    return (summarise(runs, epochs) | {"nonfinite/skipped": float(skipped)}
            | (policy_drift(policy, batch, micro, info) if updates > 1 and runs else {}))


def summarise(runs: list[dict[str, float]], epochs: int) -> dict[str, float]:
    """One metrics dict from the updates' (see rl_update)."""
    n = max(len(runs), 1)
    out = {"ppo/updates": float(len(runs))}
    for k in ("loss/total", "grad_norm") + tuple(k for k in SUM_METRICS if k.startswith("loss/")):
        out[k] = math.fsum(r[k] for r in runs) / n
    for k in (k for k in SUM_METRICS if k.startswith("tokens/")):
        out[k] = math.fsum(r[k] for r in runs) / epochs
    # the share of policy tokens the rollout correction's token mask dropped (0 without it)
    out["rollout/masked_frac"] = out["tokens/masked"] / max(
        out["tokens/masked"] + out["tokens/policy"], 1.0)
    tokens = max(math.fsum(r["tokens/policy"] for r in runs), 1.0)
    for k in RATIO_METRICS:
        out[k] = math.fsum(r[k] * r["tokens/policy"] for r in runs) / tokens
    active = [r["tokens/policy"] + r["tokens/sft"] for r in runs]
    out["entropy/mean"] = (math.fsum(r["entropy/mean"] * a for r, a in zip(runs, active))
                           / max(math.fsum(active), 1.0))
    return out
