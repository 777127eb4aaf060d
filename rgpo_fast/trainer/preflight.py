"""Checks that run before any model is loaded onto a GPU: each failure is one clear line.

A run that would fail minutes in (vLLM refusing its max_model_len after the trainer's
model is on the GPU, a torch / vLLM pair built for each other's neighbours) should fail in
the first second with the numbers and the options to change.
"""

from __future__ import annotations

import json
from pathlib import Path

from rgpo_fast.algos.policy_loss import truncates
from rgpo_fast.trainer.config import ConfigError, RunConfig
from rgpo_fast.trainer.distributed import DistInfo

# Guidance modes that put a hint into the prompt sent to the rollout engine.
HINTING_GUIDANCE = ("rgpo", "ghpo")


def model_positions(model_dir: str | Path) -> int | None:
    """max_position_embeddings of a HF model directory (its config.json; nested
    text_config for multimodal configs), or None when the config does not say."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    for c in (cfg, cfg.get("text_config") or {}):
        if isinstance(c.get("max_position_embeddings"), int):
            return c["max_position_embeddings"]
    return None


def hint_room(cfg: RunConfig) -> int:
    """Tokens a hint may add to a prompt (0 when the algorithm never hints)."""
    return cfg.rollout.max_hint_tokens if cfg.algo.guidance in HINTING_GUIDANCE else 0


def required_model_len(cfg: RunConfig) -> int:
    """Longest sequence the engine must hold: a (hinted) rollout, or an evaluation answer."""
    return max(_rollout_len(cfg)[0], _eval_len(cfg)[0])


def _rollout_len(cfg: RunConfig) -> tuple[int, str]:
    need = cfg.data.max_prompt_tokens + hint_room(cfg) + cfg.rollout.max_new_tokens
    return need, (f"data.max_prompt_tokens {cfg.data.max_prompt_tokens} + rollout."
                  f"max_hint_tokens {hint_room(cfg)} + rollout.max_new_tokens "
                  f"{cfg.rollout.max_new_tokens}")


def _eval_len(cfg: RunConfig) -> tuple[int, str]:
    new = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
    return cfg.data.max_prompt_tokens + new, (
        f"data.max_prompt_tokens {cfg.data.max_prompt_tokens} + eval.max_new_tokens {new}")


def check_sequence_lengths(cfg: RunConfig, model_dir: str | Path) -> int:
    """-> the engine's max_model_len; ConfigError naming both numbers and the options when
    the model cannot hold that many positions (vLLM raises at `LLM()` otherwise; the hf
    engine would silently run past the trained positions)."""
    need, parts = max(_rollout_len(cfg), _eval_len(cfg))
    options = ("lower data.max_prompt_tokens, rollout.max_new_tokens, rollout.max_hint_tokens "
               "or eval.max_new_tokens")
    model_len = need
    if cfg.rollout.engine == "vllm" and cfg.rollout.vllm_max_model_len is not None:
        model_len = cfg.rollout.vllm_max_model_len
        if model_len < need:
            raise ConfigError(
                f"rollout.vllm_max_model_len={model_len} is shorter than the longest rollout "
                f"({parts} = {need}); raise it or {options}"
            )
    positions = model_positions(model_dir)
    if positions is not None and model_len > positions:
        if model_len != need:
            raise ConfigError(
                f"rollout.vllm_max_model_len={model_len} exceeds max_position_embeddings="
                f"{positions} of the model {model_dir}; lower it (rollouts need {need})"
            )
        raise ConfigError(
            f"rollouts need {need} positions ({parts}) but the model {model_dir} has "
            f"max_position_embeddings={positions}; {options}"
        )
    return model_len


def image_token_range(model_dir: str | Path) -> tuple[int, int] | None:
    """(fewest, most) tokens one image takes in a prompt of a vision-language model whose
    image processor resizes into [min_pixels, max_pixels] in patches merged k x k (Qwen-VL:
    one token per (patch * k)^2 pixels), read from preprocessor_config.json; None when the
    directory holds no such processor."""
    path = Path(model_dir) / "preprocessor_config.json"
    if not path.is_file():
        return None
    c = json.loads(path.read_text())
    size = c.get("size") or {}
    low = c.get("min_pixels") or size.get("shortest_edge")
    high = c.get("max_pixels") or size.get("longest_edge")
    patch, merge = c.get("patch_size"), c.get("merge_size")
    if not all(isinstance(v, int) for v in (low, high, patch, merge)):
        return None
    per_token = (patch * merge) ** 2
    return low // per_token, high // per_token


def check_image_budget(cfg: RunConfig, model_dir: str | Path) -> None:
    """data.max_prompt_tokens counts image tokens: a limit below the smallest image's
    tokens would drop every row with an image."""
    tokens = image_token_range(model_dir)
    if tokens is not None and cfg.data.max_prompt_tokens <= tokens[0]:
        raise ConfigError(
            f"data.max_prompt_tokens={cfg.data.max_prompt_tokens} counts image tokens, and "
            f"the processor of {model_dir} turns an image into {tokens[0]} to {tokens[1]} "
            "tokens: no prompt with an image fits; raise data.max_prompt_tokens")


def check_engine(cfg: RunConfig, info: DistInfo) -> None:
    """The vllm engine needs a CUDA device and a torch / vLLM pair built for each other."""
    if cfg.rollout.engine != "vllm":
        return
    if info.device.type != "cuda":
        raise ConfigError("rollout.engine=vllm needs a CUDA GPU; use rollout.engine=hf on CPU")
    from rgpo_fast.versions import check_gpu_stack

    check_gpu_stack()  # a VersionError is a UserError: one `error:` line


def check_loss_options(cfg: RunConfig) -> None:
    """A loss option this run can never apply is refused, not silently ignored.

    - `algo.clip_ratio_c` (dual clip, A < 0 and ratio > c): with one update per rollout
      batch the policy that computes the loss is the one that sampled, so the ratio is 1
      (RGPO's `is` transfers aside: their ratio is to the hinted context).
    - `algo.tis_cap`, `algo.rollout_correction`: importance weights for the rollout/trainer
      mismatch exist only where rollout log-probs come from elsewhere than the trainer (the
      vLLM engine, `is` transfers); `tis_cap` is not read by the token mask, whose bounds
      `algo.token_mask_low` / `high` are read by nothing else.
    - `algo.clip_low` / `clip_high` are not read by SAPO's gate, `algo.sapo_tau_*` by
      nothing else; top-k / top-p log-probs have no kernels in the cuda backend.
    (`algo.beta` > 0 always applies: the trainer keeps a reference policy, ref_policy.py.)
    """
    a = cfg.algo
    is_transfer = a.guidance == "rgpo" and a.transfer == "is"
    updates = cfg.train.ppo_epochs * cfg.train.mini_batches
    if a.clip_ratio_c is not None and updates == 1 and not is_transfer:
        raise ConfigError(
            f"algo.clip_ratio_c={a.clip_ratio_c} never acts with one update per rollout batch "
            "(the ratio is 1); set train.ppo_epochs or train.mini_batches above 1, or leave "
            "it unset")
    if a.rollout_correction != "token" and cfg.rollout.engine != "vllm" and not is_transfer:
        raise ConfigError(
            f"algo.rollout_correction={a.rollout_correction} never acts with "
            f"rollout.engine={cfg.rollout.engine} and no `is` transfer: there is no rollout/"
            "trainer mismatch to correct; leave it at 'token'")
    default_cap = type(a).__dataclass_fields__["tis_cap"].default
    if a.tis_cap not in (None, default_cap) and cfg.rollout.engine != "vllm" and not is_transfer:
        raise ConfigError(
            f"algo.tis_cap={a.tis_cap} never acts with rollout.engine={cfg.rollout.engine} "
            "and no `is` transfer: the trainer's own log-probs are the rollout's, so the "
            "importance weight is 1; leave it unset")
    if truncates(cfg.rollout.top_p, cfg.rollout.top_k) and cfg.train.impl == "cuda":
        raise ConfigError(
            f"train.impl=cuda has no kernels for the log-probs of a top-k / top-p sampler "
            f"(rollout.top_p={cfg.rollout.top_p}, rollout.top_k={cfg.rollout.top_k}); use "
            "train.impl=auto or triton on the GPU")
    _refuse_unread(a, ("tis_cap",), a.rollout_correction == "token_mask",
                   "with algo.rollout_correction=token_mask (its band is algo.token_mask_low "
                   "/ algo.token_mask_high)")
    _refuse_unread(a, ("token_mask_low", "token_mask_high"), a.rollout_correction != "token_mask",
                   f"with algo.rollout_correction={a.rollout_correction} (only token_mask "
                   "reads them)")
    _refuse_unread(a, ("clip_low", "clip_high"), a.objective == "sapo",
                   "with algo.objective=sapo (its gate has no clip; see algo.sapo_tau_pos / "
                   "algo.sapo_tau_neg)")
    _refuse_unread(a, ("sapo_tau_pos", "sapo_tau_neg"), a.objective != "sapo",
                   f"with algo.objective={a.objective} (only sapo reads them)")


def _refuse_unread(algo, names: tuple[str, ...], unread: bool, why: str) -> None:
    """A ConfigError when one of `names` differs from its default while `unread` holds."""
    if not unread:
        return
    fields = type(algo).__dataclass_fields__
    for name in names:
        value = getattr(algo, name)
        if value != fields[name].default:
            raise ConfigError(f"algo.{name}={value} is never read {why}; leave it unset")


# Guidance modes that read the rationale column (LUFFY trains on it directly).
RATIONALE_GUIDANCE = ("rgpo", "ghpo", "luffy")


def check_rationales(cfg: RunConfig, train_set: list) -> str | None:
    """An algorithm that needs rationales on a dataset that has none would silently run as
    GRPO: refuse it. Returns a notice when only some problems carry one (None otherwise)."""
    if cfg.algo.guidance not in RATIONALE_GUIDANCE:
        return None
    have = sum(bool(ex.rationale.strip()) for ex in train_set)
    if have == 0:
        raise ConfigError(
            f"--algo {cfg.algo.name} needs rationales, but none of the {len(train_set)} "
            f"training problems of {cfg.data.train} has one (a 'rationale' column); add "
            "them or use --algo grpo"
        )
    if have < len(train_set):
        return (f"notice: {have} of {len(train_set)} training problems carry a rationale; "
                f"the other {len(train_set) - have} are never guided ({cfg.algo.name})")
    return None
