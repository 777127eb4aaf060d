"""Rollout records and the `RolloutBatch` the fused loss consumes directly.

Alignment convention (shared with rgpo_fast.functional): the model runs on `input_ids`
(B, L); hidden[:, :-1] predicts targets = input_ids[:, 1:], so every per-token tensor is
(B, T) with T = L - 1 and entry t describes the TARGET token input_ids[:, t + 1].
`response_mask[b, t]` is True when input_ids[b, t + 1] is a response token.

Sequences are right-padded: prompt, response, padding. `pack()` turns a batch into one
padding-free row (position ids restarting at 0 per sequence, `cu_seqlens` as flash-attn
varlen expects) and `unpack()` maps per-token results back to (B, T).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch

from rgpo_fast.algos.advantages import compute_advantages

# Sample kinds, stored as int8 codes in RolloutBatch.kind.
KINDS = ("unguided", "guided", "transferred", "offpolicy")
KIND_CODES = {name: i for i, name in enumerate(KINDS)}


@dataclass
class Rollout:
    """One sampled (or reference) response to one prompt, as the rollout engine returns it.

    `group` is the index of the prompt within the step (samples of one prompt share it);
    `logprobs` are the behaviour log-probs of `response_ids` (the engine's, or for an
    `is` transfer the hinted-context ones), one per response token, or None.
    `hint_mask` marks response tokens copied from a rationale (response placement).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float] | None = None
    text: str = ""
    group: int = 0
    kind: str = "unguided"
    reward: float | None = None
    hint_mask: list[bool] | None = None
    hint_level: int = 0
    uid: str = ""
    # Prompt the behaviour log-probs refer to when it differs from `prompt_ids` (an `is`
    # transfer: log-probs under the hinted prompt). Informational for the trainer.
    behaviour_prompt_ids: list[int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KIND_CODES:
            raise ValueError(f"Rollout.kind={self.kind!r} is invalid; valid: {', '.join(KINDS)}")
        n = len(self.response_ids)
        if self.logprobs is not None and len(self.logprobs) != n:
            raise ValueError(
                f"Rollout.logprobs has {len(self.logprobs)} entries for {n} response tokens"
            )
        if self.hint_mask is not None and len(self.hint_mask) != n:
            raise ValueError(
                f"Rollout.hint_mask has {len(self.hint_mask)} entries for {n} response tokens"
            )
        if not self.prompt_ids:
            raise ValueError("Rollout.prompt_ids is empty (the first target needs a context)")


@dataclass
class RolloutBatch:
    """Tensors of one training batch. Shapes: (B, L) sequences, (B, T=L-1) per target token,
    (B,) per sample."""

    input_ids: torch.Tensor  # (B, L) long, right-padded
    attention_mask: torch.Tensor  # (B, L) long
    position_ids: torch.Tensor  # (B, L) long
    response_mask: torch.Tensor  # (B, T) bool: target is a response token
    hint_mask: torch.Tensor  # (B, T) bool: target is a copied hint token (no loss)
    advantages: torch.Tensor  # (B,) float32
    rewards: torch.Tensor  # (B,) float32
    group_ids: torch.Tensor  # (B,) long
    kind: torch.Tensor  # (B,) int8 codes into KINDS
    sft_mask: torch.Tensor  # (B,) bool: transferred samples trained by NLL
    offpolicy_mask: torch.Tensor  # (B,) bool: LUFFY reference slot (shaped ratio)
    prompt_lens: torch.Tensor  # (B,) long
    response_lens: torch.Tensor  # (B,) long
    rollout_logprobs: torch.Tensor | None = None  # (B, T) float32 behaviour log-probs
    has_rollout_logprobs: torch.Tensor | None = None  # (B,) bool rows that have them
    old_logprobs: torch.Tensor | None = None  # (B, T) float32, set by the trainer
    ref_logprobs: torch.Tensor | None = None  # (B, T) float32, set by the trainer
    hint_levels: torch.Tensor | None = None  # (B,) long, level used (0 = unguided)

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def targets(self) -> torch.Tensor:
        return self.input_ids[:, 1:]  # (B, T)

    def kind_names(self) -> list[str]:
        return [KINDS[int(k)] for k in self.kind]

    def set_old_logprobs(self, old_logprobs: torch.Tensor) -> None:
        """Store the trainer's recomputed log-probs (B, T); rows without behaviour log-probs
        get them as rollout log-probs too, so their truncated IS weight is exactly 1."""
        if old_logprobs.shape != self.response_mask.shape:
            raise ValueError(
                f"old_logprobs must be {tuple(self.response_mask.shape)}, "
                f"got {tuple(old_logprobs.shape)}"
            )
        self.old_logprobs = old_logprobs.float()
        if self.rollout_logprobs is not None:
            missing = ~self.has_rollout_logprobs  # (B,)
            self.rollout_logprobs = torch.where(
                missing[:, None], self.old_logprobs.detach(), self.rollout_logprobs
            )
            self.has_rollout_logprobs = torch.ones_like(missing)

    def loss_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for `fused_linear_policy_loss(hidden[:, :-1], weight, **kw, ...)`."""
        kw = {
            "targets": self.targets,
            "mask": self.response_mask,
            "advantages": self.advantages,
            "hint_mask": self.hint_mask,
            "sft_mask": self.sft_mask,
            "offpolicy_mask": self.offpolicy_mask,
        }
        for name in ("old_logprobs", "ref_logprobs"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        if self.rollout_logprobs is not None:
            if not bool(self.has_rollout_logprobs.all()):
                raise ValueError("some rows lack rollout log-probs: call set_old_logprobs() first")
            kw["rollout_logprobs"] = self.rollout_logprobs
        return kw

    def to(self, device: torch.device | str) -> RolloutBatch:
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device) if isinstance(v, torch.Tensor) else v
        return RolloutBatch(**moved)

    def select(self, rows: torch.Tensor | Sequence[int]) -> RolloutBatch:
        """Sub-batch of `rows` (e.g. a micro-batch), same fields."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[idx] if isinstance(v, torch.Tensor) else v
        return RolloutBatch(**out)


def _group_means(values: torch.Tensor, groups: torch.Tensor, select: torch.Tensor) -> dict:
    means = {}
    for g in torch.unique(groups[select]).tolist():
        means[g] = values[select & (groups == g)].mean().item()
    return means


def assemble_batch(
    rollouts: Sequence[Rollout],
    cfg,
    *,
    rewards: Sequence[float] | None = None,
    pad_token_id: int = 0,
) -> RolloutBatch:
    """Pure function: rollouts (+ rewards) -> RolloutBatch with advantages and masks.

    `cfg` is an AlgoConfig. Rewards come from `rewards` or from each `Rollout.reward`.
    Advantages per kind:
    - unguided, offpolicy (LUFFY mixed group), guided (GHPO: trained in the hinted context,
      replacing the failed group): `cfg.advantage` over the samples sharing a group id;
    - transferred, `sft` transfer: advantage 0 and sft_mask=True (trained by NLL only);
    - transferred, `is` transfer: r - mean(unguided rewards of its group) and the
      behaviour (hinted-context) log-probs as rollout log-probs.
    Guided RGPO samples must go through `transfer_back` first; passing them here is an error.
    """
    if not rollouts:
        raise ValueError("rollouts is empty")
    if rewards is not None:
        if len(rewards) != len(rollouts):
            raise ValueError(f"rewards has {len(rewards)} entries for {len(rollouts)} rollouts")
        reward_list = [float(r) for r in rewards]
    else:
        missing = [i for i, r in enumerate(rollouts) if r.reward is None]
        if missing:
            raise ValueError(f"rollouts {missing[:5]} have no reward and rewards=None")
        reward_list = [float(r.reward) for r in rollouts]
    if cfg.guidance != "ghpo" and any(r.kind == "guided" for r in rollouts):
        raise ValueError(
            f"guided rollouts are trained in the hinted context only under ghpo "
            f"(cfg.guidance={cfg.guidance!r}); transfer accepted ones with transfer_back()"
        )

    B = len(rollouts)
    L = max(len(r.prompt_ids) + len(r.response_ids) for r in rollouts)
    T = L - 1
    input_ids = torch.full((B, L), pad_token_id, dtype=torch.long)
    attention = torch.zeros(B, L, dtype=torch.long)
    resp_mask = torch.zeros(B, T, dtype=torch.bool)
    hint_mask = torch.zeros(B, T, dtype=torch.bool)
    any_lp = any(r.logprobs is not None for r in rollouts)
    roll_lp = torch.zeros(B, T, dtype=torch.float32) if any_lp else None
    has_lp = torch.zeros(B, dtype=torch.bool)
    for b, r in enumerate(rollouts):
        p, n = len(r.prompt_ids), len(r.response_ids)
        input_ids[b, :p] = torch.tensor(r.prompt_ids, dtype=torch.long)
        if n:
            input_ids[b, p : p + n] = torch.tensor(r.response_ids, dtype=torch.long)
        attention[b, : p + n] = 1
        # response token at sequence position p + i is target index p + i - 1
        resp_mask[b, p - 1 : p - 1 + n] = True
        if r.hint_mask is not None and n:
            hint_mask[b, p - 1 : p - 1 + n] = torch.tensor(r.hint_mask, dtype=torch.bool)
        if r.logprobs is not None and n:
            roll_lp[b, p - 1 : p - 1 + n] = torch.tensor(r.logprobs, dtype=torch.float32)
            has_lp[b] = True
        elif r.logprobs is not None:
            has_lp[b] = True
    position_ids = torch.arange(L).expand(B, L).clone()

    rew = torch.tensor(reward_list, dtype=torch.float32)  # (B,)
    groups = torch.tensor([r.group for r in rollouts], dtype=torch.long)
    kind = torch.tensor([KIND_CODES[r.kind] for r in rollouts], dtype=torch.int8)
    transferred = kind == KIND_CODES["transferred"]
    in_group = ~transferred
    adv = torch.zeros(B, dtype=torch.float32)
    if in_group.any():
        adv[in_group] = compute_advantages(cfg.advantage, rew[in_group], groups[in_group]).float()
    sft = torch.zeros(B, dtype=torch.bool)
    if transferred.any():
        if cfg.transfer == "sft":
            sft = transferred.clone()
        else:
            unguided = kind == KIND_CODES["unguided"]
            base = _group_means(rew, groups, unguided)
            for b in torch.nonzero(transferred).flatten().tolist():
                if rollouts[b].logprobs is None:
                    raise ValueError(
                        f"rollout {b}: an `is` transfer needs its hinted-context log-probs "
                        "(Rollout.logprobs); recompute them under behaviour_prompt_ids"
                    )
                g = int(groups[b])
                adv[b] = rew[b] - base.get(g, 0.0)
    offpolicy = kind == KIND_CODES["offpolicy"]
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids,
        response_mask=resp_mask,
        hint_mask=hint_mask & resp_mask,
        advantages=adv,
        rewards=rew,
        group_ids=groups,
        kind=kind,
        sft_mask=sft,
        offpolicy_mask=offpolicy,
        prompt_lens=torch.tensor([len(r.prompt_ids) for r in rollouts], dtype=torch.long),
        response_lens=torch.tensor([len(r.response_ids) for r in rollouts], dtype=torch.long),
        rollout_logprobs=roll_lp,
        has_rollout_logprobs=has_lp if any_lp else None,
        hint_levels=torch.tensor([r.hint_level for r in rollouts], dtype=torch.long),
    )


# ----------------------------------------------------------------------------- packing


@dataclass
class PackedBatch:
    """A RolloutBatch as one padding-free row of N real tokens.

    Per-token tensors are (1, N) and target-aligned within each sequence: entry i predicts
    token i + 1 of the same sequence; the last token of every sequence has no target
    (targets 0, all masks False). Run the model on `input_ids` with `position_ids` (flash
    attention varlen uses `cu_seqlens`), then use hidden (1, N, H) with `targets` directly.
    """

    input_ids: torch.Tensor  # (1, N)
    position_ids: torch.Tensor  # (1, N) restarting at 0 per sequence
    cu_seqlens: torch.Tensor  # (B + 1,) int32
    max_seqlen: int
    targets: torch.Tensor  # (1, N)
    per_token: dict[str, torch.Tensor] = field(default_factory=dict)  # each (1, N)

    def loss_kwargs(self) -> dict[str, torch.Tensor]:
        """Loss arguments in packed layout (per-sample values broadcast to tokens).

        Exact for token-mean aggregation; the seq-mean modes need sequence boundaries the
        loss does not take in a packed row, so use the padded batch for them.
        """
        return {"targets": self.targets, **self.per_token}


_PER_TOKEN = ("response_mask", "hint_mask", "rollout_logprobs", "old_logprobs", "ref_logprobs")
_PER_SEQ = ("advantages", "sft_mask", "offpolicy_mask")
_LOSS_NAME = {"response_mask": "mask"}


def pack(batch: RolloutBatch) -> PackedBatch:
    """Concatenate the real tokens of every row into one row (no padding)."""
    lens = batch.attention_mask.sum(-1)  # (B,)
    cu = torch.zeros(batch.batch_size + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0).to(torch.int32)
    N = int(cu[-1])
    ids, pos, tgt = [], [], []
    per_tok: dict[str, list[torch.Tensor]] = {}
    for b in range(batch.batch_size):
        n = int(lens[b])
        ids.append(batch.input_ids[b, :n])
        pos.append(torch.arange(n))
        tgt.append(torch.cat([batch.input_ids[b, 1:n], batch.input_ids.new_zeros(1)]))
        for name in _PER_TOKEN:
            v = getattr(batch, name)
            if v is None:
                continue
            row = torch.cat([v[b, : n - 1], v.new_zeros(1)])  # (n,) last token: no target
            per_tok.setdefault(_LOSS_NAME.get(name, name), []).append(row)
        for name in _PER_SEQ:
            per_tok.setdefault(name, []).append(getattr(batch, name)[b].expand(n))
    per_token = {k: torch.cat(v)[None] for k, v in per_tok.items()}  # (1, N)
    return PackedBatch(
        input_ids=torch.cat(ids)[None],
        position_ids=torch.cat(pos)[None],
        cu_seqlens=cu,
        max_seqlen=int(lens.max()) if N else 0,
        targets=torch.cat(tgt)[None],
        per_token=per_token,
    )


def unpack(
    values: torch.Tensor, cu_seqlens: torch.Tensor, T: int, fill: float = 0.0
) -> torch.Tensor:
    """Packed target-aligned values (1, N) or (N,) -> padded (B, T), the batch layout."""
    flat = values.reshape(-1)
    B = cu_seqlens.numel() - 1
    out = flat.new_full((B, T), fill)
    for b in range(B):
        s, e = int(cu_seqlens[b]), int(cu_seqlens[b + 1])
        out[b, : e - s - 1] = flat[s : e - 1]
    return out
