"""`AlgoConfig`: one dataclass that expresses every algorithm; presets are data.

`get_preset("rgpo")`, `get_preset("dapo", clip_high=0.3)`, ... return validated configs.
The trainer reads `cfg.guidance` to pick the guidance step ("none", "rgpo", "ghpo",
"luffy"), `cfg.loss_config()` to configure the fused loss, and the remaining fields in
the guidance / batch-assembly / dynamic-sampling functions. The loss fields are
`LossConfig`'s own (declared there once, default and help; derived here) and checked by it
(one set of bounds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rgpo_fast.algos.advantages import ADVANTAGES
from rgpo_fast.algos.guidance import COPY_RULES
from rgpo_fast.algos.policy_loss import LossConfig

GUIDANCE_MODES = ("none", "rgpo", "ghpo", "luffy")
TRIGGERS = ("level_or_fail", "all_fail")
SEGMENTATIONS = ("auto", "lines", "sentences", "steps", "tokens")
PLACEMENTS = ("prompt", "response")
TRANSFERS = ("sft", "is")
ACCEPTANCES = ("beat_all", "any_success")
TRANSFERRED_HINT = ("masked", "trained")
ESCALATIONS = ("round", "visit")


def _choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"AlgoConfig.{name}={value!r} is invalid; valid: {', '.join(valid)}")


@dataclass
class _AlgoOptions:
    """The algorithm's own options; `AlgoConfig` adds the loss options derived from
    `LossConfig` (below)."""

    name: str = field(default="rgpo", metadata={"help": "Preset name (informational)."})
    advantage: str = field(
        default="grpo", metadata={"help": "Advantage estimator: grpo, dr_grpo or rloo."}
    )
    # --- DAPO dynamic sampling
    dynamic_sampling: bool = field(
        default=False, metadata={"help": "Drop zero-variance groups and refill with new prompts."}
    )
    max_extra_rounds: int = field(
        default=3, metadata={"help": "Max extra generation rounds to refill (dynamic sampling)."}
    )
    # --- guidance (RGPO / Guide)
    guidance: str = field(
        default="rgpo",
        metadata={"help": f"Guidance scheme: {', '.join(GUIDANCE_MODES)}."},
    )
    trigger: str = field(
        default="level_or_fail",
        metadata={
            "help": "level_or_fail: guide if the hint level > 0 or no unguided success (RGPO); "
            "all_fail: only when every unguided sample failed (Guide)."
        },
    )
    success_threshold: float = field(
        default=0.5, metadata={"help": "A sample with reward >= this counts as a success."}
    )
    n_segments: int | None = field(
        default=None,
        metadata={"help": "Hint segments per rationale: None = the rationale's own steps "
                  "(lines, sentences), one per level; an int groups them into at most that "
                  "many. A hint shows at most all but the last segment."},
    )
    hint_escalation: str = field(
        default="round",
        metadata={"help": "round: a prompt whose guided samples were not accepted is tried "
                  "at the next level in the same step, up to its last partial level; "
                  "visit: one level per step, the next visit one higher."},
    )
    copies: str = field(
        default="train",
        metadata={"help": "An accepted guided solution equal to the reference rationale: "
                  "train (like any other), once (at most one per prompt and step) or drop "
                  "(only the model's own solutions are transferred)."},
    )
    segmentation: str = field(
        default="auto",
        metadata={"help": "Rationale units: auto, lines, sentences, steps or tokens (fallback)."},
    )
    num_guided: int | None = field(
        default=None, metadata={"help": "K guided samples per guided prompt; None = max(G//2, 1)."}
    )
    hint_placement: str = field(
        default="prompt",
        metadata={"help": "prompt: hint in the user message; response: as a response prefix."},
    )
    hint_template: str = field(
        default="{problem}\n\nPartial solution:\n{hint}",
        metadata={"help": "User-message template with a hint; needs {problem} and {hint}."},
    )
    transfer: str = field(
        default="sft",
        metadata={
            "help": "sft: NLL on accepted responses under the unguided prompt; is: "
            "off-policy RL sample with hinted-context behaviour log-probs."
        },
    )
    acceptance: str = field(
        default="beat_all",
        metadata={"help": "beat_all: reward > every unguided reward; any_success (ablation)."},
    )
    adaptive_levels: bool = field(
        default=True, metadata={"help": "Adapt hint levels; False = always the full hint."}
    )
    transferred_hint: str = field(
        default="masked",
        metadata={
            "help": "Response placement, sft transfer: the hint tokens at the start of a "
            "transferred solution are masked (no loss) or trained with the rest of it, as "
            "prompt placement trains a solution that restates its hint."
        },
    )
    # --- GHPO
    ghpo_omegas: tuple[float, ...] = field(
        default=(0.25, 0.5, 0.75),
        metadata={"help": "GHPO: fractions of rationale characters tried in turn."},
    )
    # --- LUFFY
    luffy_offpolicy_slots: int = field(
        default=1, metadata={"help": "LUFFY: slots of each group given to the reference."}
    )

    def __post_init__(self) -> None:
        if self.advantage not in ADVANTAGES:
            raise ValueError(
                f"AlgoConfig.advantage={self.advantage!r} is invalid; "
                f"valid: {', '.join(ADVANTAGES.names())}"
            )
        try:
            self.loss_config()  # the loss fields: LossConfig's checks, the only ones
        except ValueError as e:
            raise ValueError(f"AlgoConfig.{e}") from None
        _choice("guidance", self.guidance, GUIDANCE_MODES)
        _choice("trigger", self.trigger, TRIGGERS)
        _choice("segmentation", self.segmentation, SEGMENTATIONS)
        _choice("hint_placement", self.hint_placement, PLACEMENTS)
        _choice("transfer", self.transfer, TRANSFERS)
        _choice("acceptance", self.acceptance, ACCEPTANCES)
        _choice("transferred_hint", self.transferred_hint, TRANSFERRED_HINT)
        _choice("hint_escalation", self.hint_escalation, ESCALATIONS)
        _choice("copies", self.copies, COPY_RULES)
        if self.transferred_hint == "trained" and self.transfer != "sft":
            raise ValueError("AlgoConfig.transferred_hint='trained' needs transfer='sft': hint "
                             "tokens were not sampled, so they have no rollout log-probs")
        if self.max_extra_rounds < 0:
            raise ValueError(f"AlgoConfig.max_extra_rounds={self.max_extra_rounds} must be >= 0")
        if self.n_segments is not None and self.n_segments < 2:
            raise ValueError(f"AlgoConfig.n_segments={self.n_segments} must be >= 2 or None "
                             "(a hint shows all segments but the last)")
        if self.num_guided is not None and self.num_guided < 1:
            raise ValueError(f"AlgoConfig.num_guided={self.num_guided} must be >= 1 or None")
        if not 0.0 < self.success_threshold <= 1.0:
            raise ValueError(
                f"AlgoConfig.success_threshold={self.success_threshold} must be in (0, 1]"
            )
        if "{problem}" not in self.hint_template or "{hint}" not in self.hint_template:
            raise ValueError("AlgoConfig.hint_template must contain {problem} and {hint}")
        self.ghpo_omegas = tuple(float(w) for w in self.ghpo_omegas)
        if not self.ghpo_omegas or any(not 0.0 < w <= 1.0 for w in self.ghpo_omegas):
            raise ValueError(f"AlgoConfig.ghpo_omegas={self.ghpo_omegas} must be in (0, 1]")
        if list(self.ghpo_omegas) != sorted(self.ghpo_omegas):
            raise ValueError(f"AlgoConfig.ghpo_omegas={self.ghpo_omegas} must be increasing")
        if self.luffy_offpolicy_slots < 1:
            raise ValueError(
                f"AlgoConfig.luffy_offpolicy_slots={self.luffy_offpolicy_slots} must be >= 1"
            )

    def guided_samples(self, group_size: int) -> int:
        """K, the number of guided samples per guided prompt, for G = group_size."""
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        return self.num_guided if self.num_guided is not None else max(group_size // 2, 1)

    def loss_config(self, **overrides: Any) -> LossConfig:
        """The fused loss's options fixed by the algorithm: every LossConfig field this
        config has, plus `overrides` (e.g. temperature)."""
        values = {n: getattr(self, n) for n in LossConfig.names() if hasattr(self, n)}
        return LossConfig(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        d["ghpo_omegas"] = list(self.ghpo_omegas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _AlgoOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown AlgoConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**d)


# The loss options are declared once, as LossConfig's fields (default and help); AlgoConfig
# takes them all but the sampler's, which are the rollout's (rollout.temperature, .top_p,
# .top_k): the trainer's log-probs must be those of the distribution the engine sampled.
_ROLLOUT_OWNED = ("temperature", "top_p", "top_k")
AlgoConfig = dataclasses.make_dataclass(
    "AlgoConfig",
    [(f.name, f.type, field(default=f.default, metadata=f.metadata))
     for f in dataclasses.fields(LossConfig) if f.name not in _ROLLOUT_OWNED],
    bases=(_AlgoOptions,),
)
AlgoConfig.__module__ = __name__
AlgoConfig.__doc__ = ("Everything that distinguishes GRPO, DAPO, Dr. GRPO, GHPO, LUFFY, Guide "
                      "and RGPO: the algorithm's own options and the loss options of "
                      "LossConfig.")


# Presets are plain overrides of the defaults (which are RGPO's).
PRESETS: dict[str, dict[str, Any]] = {
    "grpo": {"guidance": "none"},
    "dapo": {
        "guidance": "none",
        "clip_high": 0.28,
        "loss_agg": "token-mean",
        "dynamic_sampling": True,
        "beta": 0.0,
    },
    "dr_grpo": {"guidance": "none", "advantage": "dr_grpo", "loss_agg": "seq-mean-token-sum-norm"},
    "ghpo": {"guidance": "ghpo", "trigger": "all_fail", "ghpo_omegas": (0.25, 0.5, 0.75)},
    # LUFFY: mixed on/off-policy group, advantages without std normalisation.
    "luffy": {"guidance": "luffy", "advantage": "dr_grpo", "luffy_gamma": 0.1},
    "guide": {"guidance": "rgpo", "trigger": "all_fail", "transfer": "is"},
    # GSPO (Qwen): the clipped sequence ratio, clip 3e-4 / 4e-4, each sequence weighted 1/B.
    "gspo": {"guidance": "none", "objective": "gspo", "clip_low": 3e-4, "clip_high": 4e-4,
             "loss_agg": "seq-mean-token-mean"},
    # CISPO (MiniMax-M1): detached IS weight capped at 1 + 4 = 5 (ScaleRL's / TRL's
    # epsilon_max), no lower cap, token-mean.
    "cispo": {"guidance": "none", "objective": "cispo", "clip_low": 1.0, "clip_high": 4.0,
              "loss_agg": "token-mean"},
    # SAPO (Qwen): the sigmoid-gated token ratio, tau_pos 1.0 / tau_neg 1.05, each sequence
    # weighted 1/B as in the paper's sequence-level average.
    "sapo": {"guidance": "none", "objective": "sapo", "loss_agg": "seq-mean-token-mean"},
    "rgpo": {"guidance": "rgpo", "trigger": "level_or_fail", "transfer": "sft"},
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str, **overrides: Any) -> AlgoConfig:
    """The validated `AlgoConfig` of preset `name`, with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(
            f"unknown algorithm preset {name!r}; valid names: {', '.join(preset_names())}"
        )
    values = {"name": name, **PRESETS[name], **overrides}
    return AlgoConfig.from_dict(values)
