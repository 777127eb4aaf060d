"""Per-token policy losses with their closed-form derivative (docs/algorithms.md).

Every term here is a function of one token's log-prob l_t only, given detached inputs
(advantage, old/ref/rollout log-probs, aggregation weight). That is what lets the fused
kernels compute d(loss)/d(l_t) in the same pass as l_t, so the backward never needs the
[tokens x vocab] logits again. The Triton and C++ kernels implement exactly
`token_loss_and_grad` for the default objective ("ppo"); CISPO, GSPO (whose ratio is a
sequence mean: algos/sequence_loss.py) and the entropy bonus run it in the composed path
of ops/linear_policy_loss.py. Tests compare its gradient with autograd through
`oracle.py`.

Statistics are returned as a vector of sums (`STAT_NAMES`) so a kernel can accumulate them
with atomics and the caller turns them into means once, after all chunks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from rgpo_fast.algos.aggregation import AGG_MODES, check_agg_mode
from rgpo_fast.algos.registry import Registry

KL_ESTIMATORS = ("k1", "k2", "k3")
# Policy-gradient objectives, a registry (OBJECTIVES, below): "ppo": the clipped token
# ratio (GRPO, DAPO, ...); "cispo": the clipped, stop-gradient importance weight times the
# log-prob (MiniMax-M1); "gspo": the clipped sequence-level ratio, the geometric mean of its
# tokens' ratios (Qwen's GSPO; registered by algos/sequence_loss.py, which the algos package
# imports). Only "ppo" runs in the kernels' one-sweep path; the others depend on more than
# the token's own log-prob in the ratio's gradient (gspo) or are rarer (cispo) and take the
# composed path of ops/linear_policy_loss.py, on every backend. "sapo": a sigmoid gate on
# the token ratio instead of a hard clip (Qwen's SAPO), also composed.
# Rollout/trainer mismatch correction with the engine's log-probs q and the trainer's o:
# "token": each token weighted by min(exp(o - q), tis_cap) (truncated IS); "token_mask":
# weighted by exp(o - q) inside [token_mask_low, token_mask_high] and dropped from the loss
# and the token counts outside (IcePop); "seq_truncate" / "seq_mask": one weight per
# sequence from the geometric mean of its tokens' ratios, truncated at tis_cap, or 0 when
# outside [1 / tis_cap, tis_cap] (a masked sequence).
ROLLOUT_CORRECTIONS = ("token", "token_mask", "seq_truncate", "seq_mask")
# The one code table of the KL estimators, passed to the Triton, C++ and CUDA kernels
# (0 means "no KL term": beta = 0 or no reference log-probs). csrc/common/token_loss.h
# holds the same values; tests/test_loss_constants.py checks that they agree.
KL_CODES = {"k1": 1, "k2": 2, "k3": 3}
# Numeric constants of the loss, the same in every backend (checked like KL_CODES).
LOG_RATIO_CLAMP = 20.0  # exp(+-20) keeps the ratio finite in fp32
K3_CLAMP = 10.0

# Sums accumulated over tokens; `metrics_from_stats` turns them into the reported metrics.
STAT_NAMES = (
    "pg_loss",  # sum_t w_t * pg_t over policy tokens
    "kl_loss",  # sum_t w_t * beta * kl_t over policy tokens
    "sft_loss",  # sum_t s_t * (-l_t) over transferred (SFT) tokens
    "n_policy",  # number of policy-gradient tokens
    "n_clip_low",  # ratio tokens whose ratio was clipped below (A < 0, rho < 1 - eps_low)
    "n_clip_high",  # ratio tokens clipped above (A > 0, rho > 1 + eps_high)
    "n_dual_clip",  # tokens capped by the dual clip (A < 0, rho > c)
    "ratio_sum",  # sum of rho (or the shaped ratio f on off-policy tokens)
    "kl_sum",  # sum of the unweighted KL estimate
    "n_sft",  # number of SFT tokens
    "entropy_sum",  # sum of token entropies over active tokens (0 when not computed)
    "n_active",  # policy + SFT tokens
)
NUM_STATS = len(STAT_NAMES)


def check_sampler(top_p: float, top_k: int) -> None:
    """The one check of a sampler's truncation options (LossConfig, fused_linear_logprobs)."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")


def truncates(top_p: float, top_k: int) -> bool:
    """Does a sampler with these options draw from a truncated distribution?"""
    return top_p < 1.0 or top_k > 0


def _opt(default: Any, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Non-tensor options of the policy loss: the one definition every layer passes on
    (public functions, the nn.Module, the oracle, the kernels' launchers, the algorithm
    presets: AlgoConfig derives its loss options from these fields, help included).
    Keyword-only; the bounds are checked here and nowhere else."""

    clip_low: float = _opt(0.2, "PPO clip eps_low (ratio >= 1-eps).")
    clip_high: float = _opt(0.2, "PPO clip eps_high (ratio <= 1+eps); DAPO uses 0.28.")
    clip_ratio_c: float | None = _opt(None, "Dual-clip constant c for A<0 (e.g. 3.0); None = off.")
    beta: float = _opt(0.0, "KL coefficient to the reference policy.")
    kl_estimator: str = _opt("k3", "KL estimator: k1, k2 or k3.")
    sft_coef: float = _opt(1e-3, "lambda of the NLL on transferred samples (sft transfer).")
    loss_agg: str = _opt("token-mean", f"Loss aggregation: {', '.join(AGG_MODES)}.")
    temperature: float = _opt(1.0, "Sampling temperature the log-probs are taken at.")
    luffy_gamma: float = _opt(0.1, "LUFFY shaping f = p / (p + g).")
    tis_cap: float | None = _opt(2.0, "Cap C of truncated importance weights min(exp(o-q), C); "
                                 "None = off.")
    entropy_coef: float = _opt(0.0, "Entropy bonus: minus this times the entropy of the policy "
                               "tokens, aggregated like the loss (computed in the fused op).")
    objective: str = _opt("ppo", "Policy-gradient objective: ppo (clipped token ratio), cispo "
                          "(clipped detached IS weight x log-prob), gspo (clipped sequence "
                          "ratio), sapo (sigmoid-gated token ratio).")
    sapo_tau_pos: float = _opt(1.0, "SAPO gate temperature for tokens with advantage > 0.")
    sapo_tau_neg: float = _opt(1.05, "SAPO gate temperature for tokens with advantage <= 0 "
                               "(SAPO uses tau_neg >= tau_pos).")
    rollout_correction: str = _opt("token", "Rollout/trainer mismatch correction: token "
                                   "(per-token IS truncated at tis_cap), token_mask (IS "
                                   "weight inside [token_mask_low, token_mask_high], token "
                                   "masked outside), seq_truncate or seq_mask (geometric-mean "
                                   "sequence ratio at tis_cap).")
    token_mask_low: float = _opt(0.5, "token_mask: lower bound of exp(o - q) (IcePop's 0.5).")
    token_mask_high: float = _opt(5.0, "token_mask: upper bound of exp(o - q) (IcePop's 5).")
    top_p: float = _opt(1.0, "Nucleus (top-p) of the sampler: log-probs are those of the "
                        "truncated, renormalised distribution the samples came from.")
    top_k: int = _opt(0, "Top-k of the sampler (0 = off), applied before top_p as the "
                      "engines do.")

    def __post_init__(self) -> None:
        if self.tis_cap is None:  # no cap: the kernels take a number
            object.__setattr__(self, "tis_cap", float("inf"))
        # clip_low = 1 puts the lower bound at a ratio of 0: no lower clip (CISPO's default)
        if not 0.0 <= self.clip_low <= 1.0:
            raise ValueError(f"clip_low must be in [0, 1], got {self.clip_low}")
        if self.clip_high < 0.0:
            raise ValueError(f"clip_high must be >= 0, got {self.clip_high}")
        if self.clip_ratio_c is not None and self.clip_ratio_c <= 1.0:
            raise ValueError(f"clip_ratio_c must be > 1 (or None), got {self.clip_ratio_c}")
        if self.beta < 0.0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"kl_estimator={self.kl_estimator!r} is unknown; valid: {', '.join(KL_ESTIMATORS)}"
            )
        if self.sft_coef < 0.0:
            raise ValueError(f"sft_coef must be >= 0, got {self.sft_coef}")
        check_agg_mode(self.loss_agg)
        if not self.temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not self.luffy_gamma > 0.0:
            raise ValueError(f"luffy_gamma must be > 0, got {self.luffy_gamma}")
        if not self.tis_cap > 0.0:
            raise ValueError(f"tis_cap must be > 0, got {self.tis_cap}")
        if self.entropy_coef < 0.0:
            raise ValueError(f"entropy_coef must be >= 0, got {self.entropy_coef}")
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective={self.objective!r} is unknown; valid: {', '.join(OBJECTIVES)}")
        if self.rollout_correction not in ROLLOUT_CORRECTIONS:
            raise ValueError(f"rollout_correction={self.rollout_correction!r} is unknown; "
                             f"valid: {', '.join(ROLLOUT_CORRECTIONS)}")
        if self.objective in ("cispo", "sapo") and self.clip_ratio_c is not None:
            raise ValueError(f"clip_ratio_c (dual clip) has no meaning for objective="
                             f"{self.objective!r}: its weight is already bounded")
        if not (self.sapo_tau_pos > 0.0 and self.sapo_tau_neg > 0.0):
            raise ValueError(f"sapo_tau_pos / sapo_tau_neg must be > 0, got "
                             f"{self.sapo_tau_pos} / {self.sapo_tau_neg}")
        if not 0.0 <= self.token_mask_low < 1.0 < self.token_mask_high:
            raise ValueError(f"token_mask bounds must satisfy 0 <= low < 1 < high, got "
                             f"[{self.token_mask_low}, {self.token_mask_high}]")
        check_sampler(self.top_p, self.top_k)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def build(cls, config: LossConfig | None = None, **options: Any) -> LossConfig:
        """`config` (default: the defaults) with `options` replaced; an unknown option name
        is a TypeError that lists the valid ones."""
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise TypeError(f"unknown loss option {unknown[0]!r}; valid: {', '.join(cls.names())}")
        base = config if config is not None else cls()
        return dataclasses.replace(base, **options) if options else base

    @property
    def truncated(self) -> bool:
        """Does the sampler truncate its distribution (top_p < 1 or top_k > 0)?"""
        return truncates(self.top_p, self.top_k)

    @property
    def kl_code(self) -> int:
        """KL_CODES entry of the estimator, or 0 when beta = 0 (no KL term)."""
        return KL_CODES[self.kl_estimator] if self.beta > 0.0 else 0


@dataclass
class TokenTerms:
    """Detached per-token inputs of the loss, flattened to (N,) float32 / bool.

    pg_weight already contains the aggregation weight of each policy token (0 elsewhere);
    sft_weight is sft_coef / (number of SFT tokens) on SFT tokens (0 elsewhere).
    """

    advantages: torch.Tensor  # (N,) fp32
    pg_weight: torch.Tensor  # (N,) fp32
    sft_weight: torch.Tensor  # (N,) fp32
    policy: torch.Tensor  # (N,) bool: tokens with a policy-gradient term
    offpolicy: torch.Tensor | None = None  # (N,) bool: LUFFY shaped-ratio tokens
    old_logprobs: torch.Tensor | None = None  # (N,) fp32
    ref_logprobs: torch.Tensor | None = None  # (N,) fp32
    rollout_logprobs: torch.Tensor | None = None  # (N,) fp32, engine log-probs for TIS
    seq_index: torch.Tensor | None = None  # (N,) long: the row of each token (gspo)

    def slice(self, start: int, end: int) -> TokenTerms:
        def s(t):
            return None if t is None else t[start:end]

        return TokenTerms(**{f.name: s(getattr(self, f.name)) for f in dataclasses.fields(self)})


KL_TERMS: Registry = Registry("KL estimator")


@KL_TERMS.register("k1")
def kl_k1(logp: torch.Tensor, ref: torch.Tensor):
    """k1 = l - ref; d/dl = 1."""
    return logp - ref, torch.ones_like(logp)


@KL_TERMS.register("k2")
def kl_k2(logp: torch.Tensor, ref: torch.Tensor):
    """k2 = (ref - l)^2 / 2; d/dl = l - ref."""
    d = ref - logp
    return 0.5 * d * d, -d


@KL_TERMS.register("k3")
def kl_k3(logp: torch.Tensor, ref: torch.Tensor):
    """k3 = exp(d) - d - 1 with d = ref - l, clamped to [-10, 10]; d/dl = 1 - exp(d) inside."""
    d = ref - logp
    e = torch.exp(d)
    k = e - d - 1.0
    inside = (k >= -K3_CLAMP) & (k <= K3_CLAMP)
    return k.clamp(-K3_CLAMP, K3_CLAMP), torch.where(inside, 1.0 - e, torch.zeros_like(e))


POLICY_TERMS: Registry = Registry("policy-gradient term")


def _token_ratio(logp, old):
    """rho = exp(clamp(l - old, +-20)) and whether l - old is inside the clamp (outside,
    the clamp kills the gradient). Without old log-probs rho = exp(l - stopgrad(l)) = 1."""
    if old is None:
        return torch.ones_like(logp), torch.ones_like(logp, dtype=torch.bool)
    raw = logp - old
    return torch.exp(raw.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)), raw.abs() < LOG_RATIO_CLAMP


@POLICY_TERMS.register("ppo")
def ppo_term(logp, old, adv, cfg: LossConfig):
    """PPO clipped surrogate (with clip-higher and optional dual clip) per token.

    Returns (pg, dpg/dl, ratio, clipped_low, clipped_high, dual_clipped).
    Without old log-probs rho = exp(l - stopgrad(l)) = 1 and d(rho)/dl = 1.
    """
    ratio, in_range = _token_ratio(logp, old)
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high))
    clip_low = (adv < 0) & (ratio < 1.0 - cfg.clip_low)
    clip_high = (adv > 0) & (ratio > 1.0 + cfg.clip_high)
    grad = torch.where(clip_low | clip_high | ~in_range, torch.zeros_like(ratio), -adv * ratio)
    dual = torch.zeros_like(clip_low)
    if cfg.clip_ratio_c is not None:
        dual = (adv < 0) & (ratio > cfg.clip_ratio_c)
        pg = torch.where(dual, -adv * cfg.clip_ratio_c, pg)
        grad = torch.where(dual, torch.zeros_like(grad), grad)
    return pg, grad, ratio, clip_low, clip_high, dual


@POLICY_TERMS.register("cispo")
def cispo_term(logp, old, adv, cfg: LossConfig):
    """CISPO per token: -sg(clip(rho, 1 - eps_low, 1 + eps_high)) * A * l. The clipped
    weight is detached, so every token keeps a gradient -c A (none is dropped by a clip).

    Returns (pg, dpg/dl, ratio, clipped_low, clipped_high, dual) like the ppo term.
    """
    if old is None:
        ratio = torch.ones_like(logp)
    else:
        ratio = torch.exp((logp - old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    c = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    # clip fractions counted as for PPO (the clip limits a push beyond the bound)
    clip_low = (adv < 0) & (ratio < 1.0 - cfg.clip_low)
    clip_high = (adv > 0) & (ratio > 1.0 + cfg.clip_high)
    return -c * adv * logp, -c * adv, ratio, clip_low, clip_high, torch.zeros_like(clip_low)


@POLICY_TERMS.register("sapo")
def sapo_term(logp, old, adv, cfg: LossConfig):
    """SAPO per token: -A * g(rho), g(rho) = (4 / tau) sigmoid(tau (rho - 1)), tau =
    sapo_tau_pos for A > 0 else sapo_tau_neg. A smooth gate instead of the hard clip:
    dg/dl = 4 s (1 - s) rho with s = sigmoid(tau (rho - 1)), which is 1 at rho = 1 (the
    4 / tau factor makes the on-policy gradient the plain policy gradient's) and decays
    smoothly as rho leaves 1, faster for larger tau.

    Returns (pg, dpg/dl, ratio, clipped_low, clipped_high, dual) like the ppo term; nothing
    is clipped, so the three masks are all False.
    """
    ratio, in_range = _token_ratio(logp, old)
    tau = torch.where(adv > 0, cfg.sapo_tau_pos, cfg.sapo_tau_neg).to(logp.dtype)
    s = torch.sigmoid(tau * (ratio - 1.0))
    pg = -adv * s * (4.0 / tau)
    grad = torch.where(in_range, -adv * 4.0 * s * (1.0 - s) * ratio, torch.zeros_like(ratio))
    none = torch.zeros_like(logp, dtype=torch.bool)
    return pg, grad, ratio, none, none, none


@POLICY_TERMS.register("shaped")
def shaped_ratio_term(logp, old, adv, cfg: LossConfig):
    """LUFFY's off-policy term: -A * f, f = p / (p + gamma), p = exp(l); no clipping, no old.

    df/dl = p * gamma / (p + gamma)^2, which is large for low-probability tokens and so
    keeps learning from rare reference tokens that a plain ratio would ignore.
    """
    gamma = cfg.luffy_gamma
    p = torch.exp(logp)
    f = p / (p + gamma)
    return -adv * f, -adv * p * gamma / (p + gamma) ** 2, f


# An objective: (logp, terms, w, cfg) -> per-token (pg loss, d/dl, ratio, clipped low,
# clipped high, dual-clipped), `w` the tokens' weights (aggregation and truncated IS).
OBJECTIVES: Registry = Registry("policy-gradient objective")


def _token_objective(name: str):
    """The objective of token term `name`: w * term on ratio tokens, LUFFY's shaped ratio on
    off-policy tokens."""
    term = POLICY_TERMS.get(name)

    def objective(logp, terms: TokenTerms, w, cfg: LossConfig):
        pg, grad, ratio, c_low, c_high, dual = term(logp, terms.old_logprobs, terms.advantages,
                                                    cfg)  # fmt: skip
        off = terms.offpolicy
        if off is not None and (off := off & terms.policy).any():
            pg_off, grad_off, f = POLICY_TERMS.get("shaped")(logp, None, terms.advantages, cfg)
            pg = torch.where(off, pg_off, pg)
            grad = torch.where(off, grad_off, grad)
            ratio = torch.where(off, f, ratio)
        return w * pg, w * grad, ratio, c_low, c_high, dual

    objective.__name__ = f"{name}_objective"
    return objective


OBJECTIVES.register("ppo")(_token_objective("ppo"))
OBJECTIVES.register("cispo")(_token_objective("cispo"))
OBJECTIVES.register("sapo")(_token_objective("sapo"))


def token_loss_and_grad(
    logp: torch.Tensor,
    terms: TokenTerms,
    cfg: LossConfig,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token loss contribution, its derivative w.r.t. logp, and the stats vector.

    logp (N,) fp32 (no grad needed). Returns loss_t (N,), dloss_t/dlogp (N,), stats (NUM_STATS,).
    The full loss is loss_t.sum(): aggregation is already inside the weights.
    """
    logp = logp.detach()
    if logp.dtype not in (torch.float32, torch.float64):
        logp = logp.float()
    policy = terms.policy
    off = terms.offpolicy if terms.offpolicy is not None else torch.zeros_like(policy)
    ratio_tok = policy & ~off
    off_tok = policy & off

    if cfg.objective != "ppo" and off_tok.any():
        raise ValueError(f"objective={cfg.objective!r} does not combine with LUFFY's "
                         "off-policy tokens (offpolicy_mask): their shaped ratio is token-level")
    w = terms.pg_weight
    if terms.rollout_logprobs is not None:
        # Truncated importance sampling against the rollout engine's own log-probs:
        # a detached weight min(exp(o - q), C) with o the trainer's old log-prob.
        old = terms.old_logprobs if terms.old_logprobs is not None else logp
        tis = torch.exp((old - terms.rollout_logprobs).clamp(max=LOG_RATIO_CLAMP))
        w = w * torch.where(ratio_tok, tis.clamp(max=cfg.tis_cap), torch.ones_like(tis))
    w = torch.where(policy, w, torch.zeros_like(w))

    loss_pg, grad_t, ratio, c_low, c_high, dual = OBJECTIVES.get(cfg.objective)(logp, terms,
                                                                               w, cfg)
    kl = torch.zeros_like(logp)
    loss_kl = torch.zeros_like(logp)
    if cfg.beta > 0.0 and terms.ref_logprobs is not None:
        kl, dkl = KL_TERMS.get(cfg.kl_estimator)(logp, terms.ref_logprobs)
        kl = torch.where(policy, kl, torch.zeros_like(kl))
        loss_kl = w * cfg.beta * kl
        grad_t = grad_t + w * cfg.beta * dkl

    sft = terms.sft_weight
    loss_sft = -sft * logp
    grad_t = grad_t - sft
    sft_tok = sft > 0

    pf = policy.float()
    active = policy | sft_tok
    stats = torch.stack(
        [
            loss_pg.sum(),
            loss_kl.sum(),
            loss_sft.sum(),
            pf.sum(),
            (c_low & ratio_tok).float().sum(),
            (c_high & ratio_tok).float().sum(),
            (dual & ratio_tok).float().sum(),
            (ratio * pf).sum(),
            (kl * pf).sum(),
            sft_tok.float().sum(),
            (entropy.float() * active.float()).sum() if entropy is not None else logp.new_zeros(()),
            active.float().sum(),
        ]
    )
    return loss_pg + loss_kl + loss_sft, grad_t, stats


def entropy_bonus(entropy: torch.Tensor, terms: TokenTerms,
                  cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The entropy bonus - coef * sum_t w_t H_t over policy tokens, w_t the policy-gradient
    aggregation weight (verl's entropy_coeff with the same aggregation as the loss), and its
    derivative w.r.t. each token's entropy H_t: (scalar fp32, (N,) fp32)."""
    g = -cfg.entropy_coef * terms.pg_weight.float()  # pg_weight is 0 off policy tokens
    return (g * entropy.float()).sum(), g


def metrics_from_stats(stats: torch.Tensor, with_entropy: bool) -> dict[str, torch.Tensor]:
    """Turn the summed stats vector into reported metrics (0-dim detached tensors)."""
    s = dict(zip(STAT_NAMES, stats.detach().unbind(0)))
    n_pol = s["n_policy"].clamp(min=1)
    out = {
        "loss/pg": s["pg_loss"],
        "loss/kl": s["kl_loss"],
        "loss/sft": s["sft_loss"],
        "clip_frac/low": s["n_clip_low"] / n_pol,
        "clip_frac/high": s["n_clip_high"] / n_pol,
        "clip_frac/dual": s["n_dual_clip"] / n_pol,
        "ratio/mean": s["ratio_sum"] / n_pol,
        "kl/mean": s["kl_sum"] / n_pol,
        "tokens/policy": s["n_policy"],
        "tokens/sft": s["n_sft"],
    }
    if with_entropy:
        out["entropy/mean"] = s["entropy_sum"] / s["n_active"].clamp(min=1)
    return out
