"""`TrainBatch`, the tensors the fused loss consumes, and `assemble_batch`, which builds it.

Alignment convention (shared with rgpo_fast.functional): the model runs on `input_ids`
(B, L); hidden[:, :-1] predicts targets = input_ids[:, 1:], so every per-token tensor is
(B, T) with T = L - 1 and entry t describes the TARGET token input_ids[:, t + 1].
`response_mask[b, t]` is True when input_ids[b, t + 1] is a response token.

Sequences are right-padded: prompt, response, padding. (The padding-free layout of the
policy forward is built from `attention_mask` in trainer/policy.py.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from rgpo_fast.algos.advantages import compute_advantages
from rgpo_fast.data.multimodal import collate_vision
from rgpo_fast.data.types import SAMPLE_KINDS, Sample

KIND_CODES = {name: i for i, name in enumerate(SAMPLE_KINDS)}


@dataclass
class TrainBatch:
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
    kind: torch.Tensor  # (B,) int8 codes into SAMPLE_KINDS
    sft_mask: torch.Tensor  # (B,) bool: transferred samples trained by NLL
    offpolicy_mask: torch.Tensor  # (B,) bool: LUFFY reference slot (shaped ratio)
    prompt_lens: torch.Tensor  # (B,) long
    response_lens: torch.Tensor  # (B,) long
    rollout_logprobs: torch.Tensor | None = None  # (B, T) float32 (Sample.rollout_logprobs)
    has_rollout_logprobs: torch.Tensor | None = None  # (B,) bool rows that have them
    old_logprobs: torch.Tensor | None = None  # (B, T) float32, set by the trainer
    ref_logprobs: torch.Tensor | None = None  # (B, T) float32, set by the trainer
    hint_levels: torch.Tensor | None = None  # (B,) long, level used (0 = unguided)
    vision: list | None = None  # per row: the prompt's VisionInputs or None (text rows)

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def targets(self) -> torch.Tensor:
        return self.input_ids[:, 1:]  # (B, T)

    def set_old_logprobs(self, old_logprobs: torch.Tensor) -> None:
        """Store the trainer's recomputed log-probs (B, T); rows without rollout log-probs
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

    def loss_inputs(self) -> dict[str, torch.Tensor]:
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

    def model_inputs(self) -> dict:
        """The policy forward's keyword arguments for the rows' images (none for text)."""
        return image_inputs(self.vision or [], self.prompt_lens, self.input_ids.device)

    def to(self, device: torch.device | str) -> TrainBatch:
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device) if isinstance(v, torch.Tensor) else v
        return TrainBatch(**moved)

    def select(self, rows: torch.Tensor | Sequence[int]) -> TrainBatch:
        """Sub-batch of `rows` (e.g. a micro-batch), same fields."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[idx] if isinstance(v, torch.Tensor) else v
        if self.vision is not None:
            out["vision"] = [self.vision[i] for i in idx.tolist()]
        return TrainBatch(**out)


def image_inputs(rows: Sequence, prompt_lens: torch.Tensor | Sequence[int],
                 device: torch.device | str) -> dict:
    """The policy forward's keywords for rows showing `rows[b]`'s images (None: a text row):
    the batch's images and where each row's prompt ends (only the prompt's placeholders
    take image features); empty when no row has images."""
    vision = collate_vision(rows, device)
    if vision is None:
        return {}
    return {"vision": vision, "prompt_lens": torch.as_tensor(prompt_lens, device=device)}


def _group_means(values: torch.Tensor, groups: torch.Tensor, select: torch.Tensor) -> dict:
    means = {}
    for g in torch.unique(groups[select]).tolist():
        means[g] = values[select & (groups == g)].mean().item()
    return means


def assemble_batch(
    samples: Sequence[Sample],
    cfg,
    *,
    rewards: Sequence[float] | None = None,
    pad_token_id: int = 0,
) -> TrainBatch:
    """Pure function: samples (+ rewards) -> TrainBatch with advantages and masks.

    `cfg` is an AlgoConfig. Rewards come from `rewards` or from each `Sample.reward`.
    Advantages per kind:
    - unguided, offpolicy (LUFFY mixed group), guided (GHPO: trained in the hinted context,
      replacing the failed group): `cfg.advantage` over the samples sharing a group id;
    - transferred, `sft` transfer: advantage 0 and sft_mask=True (trained by NLL only);
    - transferred, `is` transfer: r - mean(unguided rewards of its group) and the
      hinted-context log-probs as rollout log-probs;
    - sft (the warm start's rationales): advantage 0 and sft_mask=True, whatever the
      transfer.
    Guided RGPO samples must go through `transfer_back` first; passing them here is an error.
    """
    if not samples:
        raise ValueError("samples is empty")
    if rewards is not None:
        if len(rewards) != len(samples):
            raise ValueError(f"rewards has {len(rewards)} entries for {len(samples)} samples")
        reward_list = [float(r) for r in rewards]
    else:
        missing = [i for i, r in enumerate(samples) if r.reward is None]
        if missing:
            raise ValueError(f"samples {missing[:5]} have no reward and rewards=None")
        reward_list = [float(r.reward) for r in samples]
    if cfg.guidance != "ghpo" and any(r.kind == "guided" for r in samples):
        raise ValueError(
            f"guided samples are trained in the hinted context only under ghpo "
            f"(cfg.guidance={cfg.guidance!r}); transfer accepted ones with transfer_back()"
        )

    B = len(samples)
    L = max(len(r.prompt_ids) + len(r.response_ids) for r in samples)
    T = L - 1
    input_ids = torch.full((B, L), pad_token_id, dtype=torch.long)
    attention = torch.zeros(B, L, dtype=torch.long)
    resp_mask = torch.zeros(B, T, dtype=torch.bool)
    hint_mask = torch.zeros(B, T, dtype=torch.bool)
    any_lp = any(r.rollout_logprobs is not None for r in samples)
    roll_lp = torch.zeros(B, T, dtype=torch.float32) if any_lp else None
    has_lp = torch.zeros(B, dtype=torch.bool)
    for b, r in enumerate(samples):
        p, n = len(r.prompt_ids), len(r.response_ids)
        input_ids[b, :p] = torch.tensor(r.prompt_ids, dtype=torch.long)
        if n:
            input_ids[b, p : p + n] = torch.tensor(r.response_ids, dtype=torch.long)
        attention[b, : p + n] = 1
        # response token at sequence position p + i is target index p + i - 1
        resp_mask[b, p - 1 : p - 1 + n] = True
        if r.hint_mask is not None and n:
            hint_mask[b, p - 1 : p - 1 + n] = torch.tensor(r.hint_mask, dtype=torch.bool)
        if r.rollout_logprobs is not None and n:
            roll_lp[b, p - 1 : p - 1 + n] = torch.tensor(r.rollout_logprobs, dtype=torch.float32)
            has_lp[b] = True
        elif r.rollout_logprobs is not None:
            has_lp[b] = True
    position_ids = torch.arange(L).expand(B, L).clone()

    rew = torch.tensor(reward_list, dtype=torch.float32)  # (B,)
    groups = torch.tensor([r.group for r in samples], dtype=torch.long)
    kind = torch.tensor([KIND_CODES[r.kind] for r in samples], dtype=torch.int8)
    transferred = kind == KIND_CODES["transferred"]
    supervised = kind == KIND_CODES["sft"]
    in_group = ~(transferred | supervised)
    adv = torch.zeros(B, dtype=torch.float32)
    if in_group.any():
        adv[in_group] = compute_advantages(cfg.advantage, rew[in_group], groups[in_group]).float()
    sft = supervised.clone()
    if transferred.any():
        if cfg.transfer == "sft":
            sft = sft | transferred
        else:
            unguided = kind == KIND_CODES["unguided"]
            base = _group_means(rew, groups, unguided)
            for b in torch.nonzero(transferred).flatten().tolist():
                if samples[b].rollout_logprobs is None:
                    raise ValueError(
                        f"sample {b}: an `is` transfer needs its hinted-context log-probs "
                        "(Sample.rollout_logprobs); recompute them under rollout_prompt_ids"
                    )
                g = int(groups[b])
                adv[b] = rew[b] - base.get(g, 0.0)
    offpolicy = kind == KIND_CODES["offpolicy"]
    return TrainBatch(
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
        prompt_lens=torch.tensor([len(r.prompt_ids) for r in samples], dtype=torch.long),
        response_lens=torch.tensor([len(r.response_ids) for r in samples], dtype=torch.long),
        rollout_logprobs=roll_lp,
        has_rollout_logprobs=has_lp if any_lp else None,
        hint_levels=torch.tensor([r.hint_level for r in samples], dtype=torch.long),
        vision=[r.vision for r in samples] if any(r.vision is not None for r in samples)
        else None,
    )
