"""The training machinery shared by the SFT warm start and RL (trainer/rl_update.py runs
an RL step's updates with it): the policy's log-probs of a batch (old or reference
log-probs), global normalisers, micro-batches, backward, the optimizer step.

The normaliser is explicit and global: token / sequence counts of the whole step batch,
summed over data-parallel ranks, are passed to the fused loss as `num_global_*`. Every
micro-batch loss is then a slice of one global loss, so gradients accumulate by plain
summation across micro-batches and ranks (FSDP2 sums, see distributed.py) and the step
is independent of how the batch is split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from rgpo_fast.algos.aggregation import local_counts, token_roles
from rgpo_fast.algos.policy_loss import LossConfig
from rgpo_fast.algos.sequence_loss import token_mask_weights
from rgpo_fast.batch import TrainBatch, image_inputs
from rgpo_fast.data.types import Sample
from rgpo_fast.trainer.distributed import DistInfo, all_reduce_max_int, all_reduce_sum
from rgpo_fast.trainer.nonfinite import NonFiniteGuard

GroupRows = Callable[[Sequence[int], int], "list[list[int]]"]

# Metrics of the fused loss (rgpo_fast.algos.policy_loss.metrics_from_stats) that add up
# across micro-batches and ranks...
SUM_METRICS = ("loss/pg", "loss/kl", "loss/sft", "tokens/policy", "tokens/sft", "tokens/masked")
# ... and per-token means over policy tokens (clip fractions, importance ratio, KL to the
# reference), averaged weighted by each micro-batch's policy tokens; `entropy/mean` is over
# all trained tokens (policy and SFT), weighted by those.
RATIO_METRICS = ("clip_frac/low", "clip_frac/high", "clip_frac/dual", "ratio/mean", "kl/mean")


def loss_counts(batch: TrainBatch, config: LossConfig) -> torch.Tensor:
    """Local (policy tokens, policy sequences, SFT tokens), fp32 (3,), with the fused loss's
    own split of tokens (`token_roles`, less the tokens the rollout correction's token mask
    drops), so the global normalisers count what it weights."""
    _, sft_tok, policy = token_roles(batch.response_mask, batch.hint_mask, batch.sft_mask)
    if config.rollout_correction == "token_mask" and batch.rollout_logprobs is not None:
        policy, _ = token_mask_weights(policy, batch.old_logprobs, batch.rollout_logprobs,
                                       config)
    tokens, seqs = local_counts(policy)
    return torch.stack([tokens, seqs, sft_tok.sum().float()])


def trim(batch: TrainBatch) -> TrainBatch:
    """Cut right padding shared by every row (micro-batches are shorter than the batch)."""
    L = int(batch.attention_mask.sum(-1).max())
    T = L - 1
    out = {}
    for name, v in vars(batch).items():
        if isinstance(v, torch.Tensor) and v.dim() == 2:
            out[name] = v[:, : L if v.shape[1] == batch.input_ids.shape[1] else T]
        else:
            out[name] = v
    return TrainBatch(**out)


def micro_batches(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Row indices in micro-batches of at most `size` rows, rows of similar length together.

    Rows are taken in order of length (stable), so `trim` cuts nearly all right padding of
    a micro-batch: in the learning benchmark's SFT batches (unhinted rows of ~46 tokens
    beside copy rows of ~127) about half the tokens of a batch padded to its longest row
    are padding. Gradients do not depend on the grouping (global normalisers, summed
    micro-batch losses)."""
    if size < 1:
        raise ValueError(f"micro-batch size must be >= 1, got {size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s : s + size] for s in range(0, len(order), size)]


@torch.no_grad()
def policy_logprobs(policy: torch.nn.Module, batch: TrainBatch, micro: int,
                    info: DistInfo) -> torch.Tensor:
    """(B, T) log-probs of every target of `batch` under `policy`'s current weights, no
    grad: the old log-probs before an update, or the reference policy's."""
    out = torch.zeros(batch.response_mask.shape, dtype=torch.float32)
    chunks = micro_batches(batch.attention_mask.sum(-1).tolist(), micro)
    n = all_reduce_max_int(len(chunks), info)
    for i in range(n):
        if i >= len(chunks):  # keep FSDP collectives in step with the other ranks
            policy(batch.input_ids[:1, :2].to(info.device), None, None, mode="logprobs")
            continue
        mb = trim(batch.select(chunks[i])).to(info.device)
        lp = policy(mb.input_ids, mb.attention_mask, mb.position_ids, mode="logprobs",
                    **mb.model_inputs())
        out[chunks[i], : lp.shape[1]] = lp.float().cpu()
    return out


@torch.no_grad()
def fill_rollout_logprobs(
    policy: torch.nn.Module, samples: list[Sample], pad_token_id: int, micro: int,
    info: DistInfo,
) -> int:
    """Fill `Sample.rollout_logprobs` of `is`-transferred samples that lack them:
    log p(y | x + h) under `rollout_prompt_ids` and the current policy, i.e. the policy that
    sampled y (one update per step).

    Needed when re-tokenising the response after the hint-free prompt changed its tokens,
    or when the engine's log-probs were not kept (hf engine, hint in the response). Every
    rank runs the same number of forwards (FSDP collectives). Returns how many were filled.
    """
    todo = [r for r in samples
            if r.rollout_logprobs is None and r.rollout_prompt_ids is not None]  # fmt: skip
    chunks = micro_batches([len(r.rollout_prompt_ids) + len(r.response_ids) for r in todo], micro)
    n = all_reduce_max_int(len(chunks), info)
    for i in range(n):
        if i >= len(chunks):  # keep FSDP collectives in step with the other ranks
            dummy = torch.full((1, 2), pad_token_id, dtype=torch.long, device=info.device)
            policy(dummy, None, None, mode="logprobs")
            continue
        rows = [todo[j] for j in chunks[i]]
        seqs = [list(r.rollout_prompt_ids) + list(r.response_ids) for r in rows]
        L = max(len(q) for q in seqs)
        ids = torch.full((len(rows), L), pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(rows), L), dtype=torch.long)
        for b, q in enumerate(seqs):
            ids[b, : len(q)] = torch.tensor(q)
            attn[b, : len(q)] = 1
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        dev = info.device
        images = image_inputs([r.vision for r in rows],
                              [len(r.rollout_prompt_ids) for r in rows], dev)
        lp = policy(ids.to(dev), attn.to(dev), pos.to(dev), mode="logprobs",
                    **images).float().cpu()
        for b, r in enumerate(rows):
            # Target index t scores token t + 1: the response starts at index len(prompt) - 1.
            start = len(r.rollout_prompt_ids) - 1
            r.rollout_logprobs = lp[b, start : start + len(r.response_ids)].tolist()
    return len(todo)


def backward_batch(policy: torch.nn.Module, batch: TrainBatch, config: LossConfig,
                   micro: int, info: DistInfo, *, max_response_len: int | None = None,
                   group_rows: GroupRows = micro_batches,
                   entropy: bool = False) -> dict[str, float]:
    """Forward + backward over micro-batches; gradients accumulate in .grad.

    `group_rows(lengths, micro)` forms the micro-batches (default `micro_batches`, rows of
    similar length together). Returns the global loss (summed over micro-batches and
    ranks), the SUM_METRICS summed and the RATIO_METRICS as means over policy tokens; with
    `entropy`, also `entropy/mean` over the trained tokens (the fused log-prob sweep computes
    it for little extra work; the RL update logs it, the SFT warm start has no use for it).
    """
    counts = all_reduce_sum(loss_counts(batch, config), info)  # (3,) global
    dummy = torch.zeros((1, 2), dtype=torch.long, device=info.device)  # batch may have no rows
    kw = dict(config=config, num_global_tokens=counts[0], num_global_seqs=counts[1],
              num_global_sft_tokens=counts[2], max_response_len=max_response_len,
              return_entropy=entropy)
    chunks = group_rows(batch.attention_mask.sum(-1).tolist(), micro)
    n = all_reduce_max_int(len(chunks), info)
    # loss, SUM_METRICS, RATIO_METRICS x policy tokens: one vector, one all-reduce, the same
    # on every rank (a rank without rows in this batch contributes zeros)
    acc = torch.zeros(2 + len(SUM_METRICS) + len(RATIO_METRICS), dtype=torch.float64)
    for i in range(n):
        if i >= len(chunks):
            loss, _ = policy(dummy, None, None, mode="zero")
            loss.backward()
            continue
        mb = trim(batch.select(chunks[i])).to(info.device)
        loss, metrics = policy(mb.input_ids, mb.attention_mask, mb.position_ids, mode="loss",
                               loss_inputs={**kw, **mb.loss_inputs()}, **mb.model_inputs())
        loss.backward()
        n_pol = float(metrics["tokens/policy"])
        n_active = n_pol + float(metrics["tokens/sft"])  # entropy/mean's own denominator
        acc += torch.tensor([float(loss.detach())] + [float(metrics[k]) for k in SUM_METRICS]
                            + [float(metrics[k]) * n_pol for k in RATIO_METRICS]
                            + [float(metrics.get("entropy/mean", 0.0)) * n_active],
                            dtype=torch.float64)  # fmt: skip
    g = all_reduce_sum(acc, info).tolist()
    out = {"loss/total": g[0], **dict(zip(SUM_METRICS, g[1 : 1 + len(SUM_METRICS)]))}
    n_policy = max(out["tokens/policy"], 1.0)
    for k, v in zip(RATIO_METRICS, g[1 + len(SUM_METRICS) : -1]):
        out[k] = v / n_policy
    if entropy:
        out["entropy/mean"] = g[-1] / max(out["tokens/policy"] + out["tokens/sft"], 1.0)
    return out


def optimizer_step(policy: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler, grad_clip: float, *, guard: NonFiniteGuard | None = None,
                   step: int = 0, loss: float = 0.0) -> float:
    """Clip (global norm, works on FSDP2 DTensor grads), step, zero grads; returns the norm.

    With a `guard`, a non-finite `loss` or norm stops the run, or (skip mode) drops this
    update: the gradients are zeroed and the optimizer's state is left as it was; the
    scheduler still advances, so the schedule does not depend on skips."""
    params = [p for p in policy.parameters() if p.grad is not None]
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    norm = float(norm)
    if guard is None or guard.admit(step, loss, norm):
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def make_optimizer(policy: torch.nn.Module, lr: float, cfg) -> torch.optim.Optimizer:
    """AdamW over the trained parameters (a frozen vision tower has none)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int,
                   schedule: str, floor: float = 0.1):
    """Linear warm-up, then constant / cosine / linear decay to `floor` x lr."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total_steps <= warmup:
            return 1.0
        frac = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        if schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))
        return floor + (1 - floor) * (1 - frac)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
