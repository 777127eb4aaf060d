"""TRL adapter: run `trl.GRPOTrainer` with rgpo_fast's fused policy loss, plus RGPO guidance.

    from rgpo_fast.integrations.trl import RGPOFusedGRPOTrainer
    trainer = RGPOFusedGRPOTrainer(model=model, reward_funcs=reward, args=GRPOConfig(...),
                                   train_dataset=ds, processing_class=tok)
    trainer.train()

What changes compared with `GRPOTrainer` (TRL 1.16):

- The loss. TRL's `_compute_loss` gets per-token log-probs from its chunked fused LM head
  and builds the clipped loss in PyTorch over (B, T) tensors. Here the model's forward is
  given one more keyword, `rgpo_loss`, that runs the backbone and hands the completion
  positions of `last_hidden_state` and the lm_head weight to
  `rgpo_fast.fused_linear_policy_loss`: log-probs, clipping, KL and aggregation happen in one
  fused op and the backward never rebuilds logits. The loss is computed *inside* forward,
  like TRL's fused head, so DDP / FSDP wrappers see an ordinary forward call.
- Options are read from the `GRPOConfig` (see `trl_loss_options` and docs/integrations.md):
  loss_type grpo / bnpo / dr_grpo / dapo / cispo / sapo (sapo_temperature_pos / _neg),
  importance_sampling_level sequence (GSPO), epsilon / epsilon_high, delta, beta (k3 KL),
  temperature, num_iterations (old log-probs), mask_truncated_completions, tool masks.
  Settings the fused loss does not implement (other loss types, sequence-level importance
  sampling, entropy masks or bonuses, vLLM importance-sampling correction, off-policy
  masks, bias-corrected KL, MoE aux loss) fall back to TRL's own loss with a one-time
  warning, or raise with `on_unsupported="error"`.
- Vision-language models: TRL's image inputs of the batch (pixel_values, image_grid_thw,
  mm_token_type_ids, ...) go to the model's multimodal body as TRL passes them to its own
  forward; the fused loss reads its last hidden state as for text. RGPO / GHPO guidance
  needs text prompts (the guided round re-prompts through TRL's text generation path).
- RGPO guidance (`guidance=get_preset("rgpo")`): after TRL's generation and reward step,
  groups that need guidance and whose dataset row has a rationale (column
  `rationale_column`) are re-prompted with a rationale prefix (hint level per prompt),
  K guided completions are sampled with the same model through TRL's own generation path,
  scored with the same reward functions, and those that beat every unguided reward are
  re-tokenised under the unguided prompt and appended to the batch as SFT-transfer rows
  (advantage 0, `sft_mask`): they enter the loss as `sft_coef * NLL`, normalised over all
  transferred tokens of the generation batch. Supported: a single process, text prompts,
  `transfer="sft"`, `hint_placement="prompt"`.
- GHPO guidance (`guidance=get_preset("ghpo")`): an all-failed group is sampled again with
  growing rationale prefixes in the prompt and replaces its rows (hinted prompt, new
  completions, TRL's group advantages of the new rewards); refused where TRL computed
  per-row values that would need another forward (beta, num_iterations > 1, vLLM).
"""

from __future__ import annotations

import functools
import hashlib
import types
import warnings
from typing import Any

import torch

from rgpo_fast.algos.guidance import HintLevels
from rgpo_fast.algos.presets import AlgoConfig
from rgpo_fast.data.prompts import user_message
from rgpo_fast.data.types import Sample
from rgpo_fast.functional import fused_linear_policy_loss
from rgpo_fast.guidance_modes import GUIDANCE
from rgpo_fast.guided_round import Callbacks, PromptGroup
from rgpo_fast.rollout.base import Completion

try:  # TRL is optional for rgpo_fast, required by this module
    from trl import GRPOTrainer
    from trl.trainer.utils import shuffle_sequence_dict
except ImportError as e:  # pragma: no cover - exercised only without trl installed
    raise ImportError(
        "rgpo_fast.integrations.trl needs TRL (pip install 'trl>=1.16'); " f"import failed: {e}"
    ) from e

# TRL loss_type -> our loss_agg. The normaliser each one uses is set in `_normalisers`.
TRL_LOSS_AGG = {
    "grpo": "seq-mean-token-mean",  # mean over sequences of the per-sequence token mean
    "bnpo": "token-mean",  # tokens of the local micro-batch
    "dr_grpo": "seq-mean-token-sum-norm",  # / (B * max_completion_length)
    "dapo": "token-mean",  # tokens of the whole generation batch (global count)
    "cispo": "token-mean",  # as dapo; objective cispo (trl_loss_options)
    "sapo": "seq-mean-token-mean",  # as grpo; objective sapo (trl_loss_options)
}

# Batch keys of a multimodal model's inputs, passed to its forward as TRL passes them (a
# whole micro-batch: TRL's per-row slicing is the identity); the image and tile counts only
# tell TRL how to slice.
_MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "spatial_shapes",
                    "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")
_MULTIMODAL_COUNTS = ("num_images", "num_tiles")


def multimodal_inputs(inputs: dict) -> dict[str, torch.Tensor]:
    """The model-forward keywords of a TRL batch's images (empty for text)."""
    return {k: inputs[k] for k in _MULTIMODAL_KEYS if inputs.get(k) is not None}

SFT_MASK_KEY = "rgpo_sft_mask"
SFT_TOKENS_KEY = "rgpo_num_sft_tokens"


# ----------------------------------------------------------------------------- option mapping


def trl_loss_options(args: Any, loss_type: str | None = None) -> dict[str, Any]:
    """`fused_linear_policy_loss` options equivalent to a `GRPOConfig` (token-level IS).

    epsilon -> clip_low, epsilon_high (or epsilon) -> clip_high, delta -> clip_ratio_c
    (TRL caps the unclipped ratio at delta; for A < 0 that is the dual clip, for A > 0 the
    clipped term is already below delta), beta -> beta with the k3 estimator (TRL's only
    one), temperature -> temperature, loss_type -> loss_agg (TRL_LOSS_AGG).
    """
    lt = loss_type or args.loss_type
    if lt not in TRL_LOSS_AGG:
        raise ValueError(f"loss_type {lt!r} has no fused equivalent; supported: "
                         f"{', '.join(TRL_LOSS_AGG)}")  # fmt: skip
    eps_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    opts = {
        "clip_low": float(args.epsilon),
        "clip_high": float(eps_high),
        "clip_ratio_c": None if args.delta is None else float(args.delta),
        "beta": float(args.beta),
        "kl_estimator": "k3",
        "loss_agg": TRL_LOSS_AGG[lt],
        "temperature": float(args.temperature),
    }
    if lt == "cispo":
        # TRL caps the detached weight at epsilon_high itself (ScaleRL's eps_max), with no
        # lower cap and no delta: our clip(rho, 1 - 1, 1 + (eps_high - 1)).
        if eps_high < 1.0:
            raise ValueError(f"loss_type 'cispo' with epsilon_high={eps_high} < 1 has no "
                             "fused equivalent")
        opts.update(objective="cispo", clip_low=1.0, clip_high=float(eps_high) - 1.0,
                    clip_ratio_c=None)
    elif lt == "sapo":
        # TRL's gate (4 / tau) sigmoid(tau (rho - 1)), tau by the advantage's sign; no clip
        # and no delta are read, so the clip fields keep LossConfig's (unread) defaults.
        for unread in ("clip_low", "clip_high", "clip_ratio_c"):
            del opts[unread]
        opts.update(objective="sapo", sapo_tau_pos=float(args.sapo_temperature_pos),
                    sapo_tau_neg=float(args.sapo_temperature_neg))
    elif getattr(args, "importance_sampling_level", "token") == "sequence":
        opts["objective"] = "gspo"  # TRL's sequence-level ratio: GSPO, clipped like PPO
    return opts


def unsupported_settings(trainer: GRPOTrainer) -> list[str]:
    """Reasons why the fused loss cannot reproduce TRL's loss for this trainer (empty = OK)."""
    a = trainer.args
    why = []
    if trainer.loss_type not in TRL_LOSS_AGG:
        why.append(f"loss_type={trainer.loss_type!r}")
    level = trainer.importance_sampling_level
    token_only = trainer.loss_type in ("cispo", "sapo")  # their fused terms are token-level
    if level not in ("token", "sequence") or (level == "sequence" and token_only):
        why.append(f"importance_sampling_level={level!r} with loss_type={trainer.loss_type!r}")
    if trainer.loss_type == "cispo" and (a.epsilon_high or a.epsilon) < 1.0:
        why.append(f"loss_type='cispo' with epsilon_high={a.epsilon_high or a.epsilon} < 1")
    if trainer.top_entropy_quantile < 1.0:
        why.append("top_entropy_quantile < 1")
    if trainer._entropy_bonus_enabled:
        why.append("entropy bonus (entropy_coef / use_adaptive_entropy)")
    if trainer.off_policy_mask_threshold is not None:
        why.append("off_policy_mask_threshold")
    if trainer.use_vllm and trainer.vllm_importance_sampling_correction:
        why.append("vllm_importance_sampling_correction")
    if trainer.beta != 0.0 and a.use_bias_correction_kl:
        why.append("use_bias_correction_kl")
    if trainer.aux_loss_enabled:
        why.append("MoE router aux loss")
    if a.delta is not None and trainer.loss_type != "sapo" and a.delta <= 1.0:  # sapo: unread
        why.append(f"delta={a.delta} <= 1")
    elif a.delta is not None and not token_only and \
            a.delta < 1.0 + (a.epsilon_high if a.epsilon_high is not None else a.epsilon):
        # below 1 + epsilon_high TRL's cap binds for A > 0 too; the dual clip is A < 0 only
        why.append(f"delta={a.delta} < 1 + epsilon_high")
    if not 0.0 <= a.epsilon < 1.0:
        why.append(f"epsilon={a.epsilon} outside [0, 1)")
    return why


# ----------------------------------------------------------------------------- model patch


def add_rgpo_fused_loss(model: torch.nn.Module) -> None:
    """Give `model.forward` a keyword `rgpo_loss`: a dict of `fused_linear_policy_loss`
    arguments whose `targets` (B, C) are the last C tokens of `input_ids`. With it, forward
    returns (loss, metrics) from the backbone's hidden states and the lm_head weight; without
    it, forward is unchanged (generation, TRL's fused head)."""
    if getattr(model, "_rgpo_fused_loss", False):
        return
    inner = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, rgpo_loss: dict | None = None, **kwargs):
        if rgpo_loss is None:
            return inner(*args, **kwargs)
        kwargs["use_cache"] = False
        out = self.base_model(*args, **kwargs)
        spec = dict(rgpo_loss)
        C = spec["targets"].shape[1]
        # hidden at position t predicts token t + 1: the C completion tokens are predicted by
        # the C positions before them.
        hidden = out.last_hidden_state[:, -C - 1 : -1]
        head = self.get_output_embeddings()
        weight, bias = head.weight, getattr(head, "bias", None)
        if hasattr(weight, "full_tensor"):  # FSDP2 DTensor: gather the head once
            weight = weight.full_tensor()
            bias = bias.full_tensor() if bias is not None else None
        weight = weight.to(hidden.device)
        if hidden.dtype != weight.dtype:
            hidden = hidden.to(weight.dtype)  # autocast output, or cast_lm_head_to_fp32
        # The fused op picks its own precision (fp32 accumulation and softmax statistics
        # for bf16/fp16 inputs); autocast would run its matmuls in the autocast dtype.
        with torch.autocast(hidden.device.type, enabled=False):
            return fused_linear_policy_loss(hidden, weight, bias=bias, **spec)

    model.forward = types.MethodType(forward, model)
    model._rgpo_fused_loss = True


# ----------------------------------------------------------------------------- the trainer


class RGPOFusedGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` whose policy loss is rgpo_fast's fused linear loss.

    Extra keyword arguments (everything else goes to `GRPOTrainer`):
      impl: fused-loss backend ("auto", "torch", "triton", "cpp", "cuda").
      chunk_size: token chunk of the torch backend (None = its default).
      on_unsupported: "fallback" (TRL's own loss, warn once) or "error".
      guidance: an `AlgoConfig` with guidance "rgpo" (sft_coef, n_segments, hint template,
        trigger, acceptance, K = num_guided come from it) or "ghpo" (ghpo_omegas).
      rationale_column: dataset column holding the reference rationale.
      return_entropy: compute token entropy for the `entropy` metric (as TRL logs it).
    """

    def __init__(self, *args, impl: str = "auto", chunk_size: int | None = None,
                 on_unsupported: str = "fallback", guidance: AlgoConfig | None = None,
                 rationale_column: str = "rationale", return_entropy: bool = True,
                 **kwargs) -> None:  # fmt: skip
        if on_unsupported not in ("fallback", "error"):
            raise ValueError(f"on_unsupported={on_unsupported!r}; valid: fallback, error")
        super().__init__(*args, **kwargs)
        self.rgpo_impl = impl
        self.rgpo_chunk_size = chunk_size
        self.rgpo_on_unsupported = on_unsupported
        self.rgpo_return_entropy = return_entropy
        self.rgpo_rationale_column = rationale_column
        self._rgpo_warned = False
        self.rgpo_fused_calls = 0  # number of micro-batches that used the fused loss
        target = self.model
        if hasattr(target, "get_base_model"):  # PEFT: patch the model TRL patched
            target = target.get_base_model()
        add_rgpo_fused_loss(target)
        why = unsupported_settings(self)
        if why and on_unsupported == "error":
            raise ValueError(f"the fused loss does not implement: {'; '.join(why)}")
        self.rgpo_guidance = None
        if guidance is not None and guidance.guidance != "none":
            self._check_guidance(guidance, why)
            self.rgpo_guidance = guidance
            self.rgpo_levels = HintLevels(guidance.adaptive_levels)
            # sft_coef travels with the loss options
        self.rgpo_sft_coef = guidance.sft_coef if guidance is not None else 0.0
        self._rgpo_last_rewards: torch.Tensor | None = None

    def _check_guidance(self, cfg: AlgoConfig, why: list[str]) -> None:
        problems = []
        if cfg.guidance not in ("rgpo", "ghpo"):
            # luffy's reference slots would be rows TRL never generated (no log-probs)
            problems.append(f"guidance={cfg.guidance!r} (rgpo and ghpo are supported in TRL)")
        if cfg.guidance == "rgpo" and cfg.transfer != "sft":
            problems.append(f"transfer={cfg.transfer!r} (only 'sft')")
        if cfg.guidance == "rgpo" and cfg.hint_placement != "prompt":
            problems.append(f"hint_placement={cfg.hint_placement!r} (only 'prompt')")
        if cfg.guidance == "ghpo":
            # A regrouped group's rows get new prompts and completions after TRL computed
            # its per-token log-probs and advantages: only what can be recomputed here.
            if self.beta != 0.0:
                problems.append("ghpo with beta != 0 (reference log-probs of the new rows)")
            if self.num_iterations > 1:
                problems.append("ghpo with num_iterations > 1 (old log-probs of the new rows)")
            if self.use_vllm:
                problems.append("ghpo with vLLM (its sampling log-probs of the new rows)")
            if self.scale_rewards not in ("group", "none"):
                problems.append(f"ghpo with scale_rewards={self.scale_rewards!r} (a regrouped "
                                "group's advantages are recomputed per group)")
            if getattr(self, "multi_objective_aggregation", "sum_then_normalize") != \
                    "sum_then_normalize":  # fmt: skip
                problems.append("ghpo with multi_objective_aggregation='normalize_then_sum'")
        if self.accelerator.num_processes != 1:
            problems.append("more than one process (guided generation is per process and "
                            "TRL's groups may span processes)")  # fmt: skip
        if self.use_vllm and self.vllm_mode == "server":
            problems.append("vllm_mode='server' (guided generation would need all ranks)")
        if why:
            problems.append("a loss setting the fused loss does not implement: " + "; ".join(why))
        if problems:
            raise ValueError("RGPO guidance in TRL is not available with " + ", ".join(problems))

    # ------------------------------------------------------------------ the loss

    def _normalisers(self, inputs: dict, mask: torch.Tensor, sft: torch.Tensor | None,
                     mode: str) -> dict[str, Any]:  # fmt: skip
        """num_global_* so that our per-token weights equal TRL's normalisation.

        grpo / bnpo / dr_grpo divide each micro-batch by its own count and the result by the
        gradient-accumulation steps; dapo divides by the generation batch's token count
        rescaled to one accumulation window. Transferred (SFT) rows are no policy rows.
        """
        ga = self.current_gradient_accumulation_steps if mode == "train" else 1
        window = (ga / self.args.steps_per_generation) if mode == "train" else 1.0
        nproc = self.accelerator.num_processes
        B = mask.shape[0]
        n_sft_rows = int(sft.sum()) if sft is not None else 0
        policy_tok = mask if sft is None else mask & ~sft[:, None]
        out: dict[str, Any] = {}
        lt = self.loss_type
        if lt in ("grpo", "sapo", "dr_grpo"):
            out["num_global_seqs"] = float(max(B - n_sft_rows, 1) * ga)
        if lt == "dr_grpo":
            out["max_response_len"] = int(self.max_completion_length)
        if lt == "bnpo":
            out["num_global_tokens"] = policy_tok.sum().float().clamp(min=1) * ga
        if lt in ("dapo", "cispo"):
            n = inputs["num_items_in_batch"].float().clamp(min=1) / nproc * window
            out["num_global_tokens"] = n
        if sft is not None and SFT_TOKENS_KEY in inputs:
            n_sft = inputs[SFT_TOKENS_KEY].float().clamp(min=1)
            out["num_global_sft_tokens"] = n_sft / nproc * window
        return out

    def _compute_loss(self, model, inputs):
        why = unsupported_settings(self)
        if why:
            if self.rgpo_on_unsupported == "error" or SFT_MASK_KEY in inputs:
                raise ValueError(f"the fused loss does not implement: {'; '.join(why)}")
            if not self._rgpo_warned:
                warnings.warn(f"RGPOFusedGRPOTrainer: using TRL's loss ({'; '.join(why)})",
                              stacklevel=2)  # fmt: skip
                self._rgpo_warned = True
            return super()._compute_loss(model, inputs)

        mode = "train" if self.model.training else "eval"
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask.bool()
        if "tool_mask" in inputs:  # tool outputs inside a completion carry no loss
            mask = mask & inputs["tool_mask"].bool()
        sft = inputs.get(SFT_MASK_KEY)
        sft = sft.bool() if sft is not None else None
        opts = trl_loss_options(self.args, self.loss_type)
        spec = dict(
            targets=completion_ids, mask=mask, advantages=inputs["advantages"].float(),
            old_logprobs=inputs.get("old_per_token_logps"),
            ref_logprobs=inputs.get("ref_per_token_logps") if self.beta != 0.0 else None,
            sft_mask=sft if sft is not None and bool(sft.any()) else None,
            sft_coef=self.rgpo_sft_coef, return_entropy=self.rgpo_return_entropy,
            impl=self.rgpo_impl, chunk_size=self.rgpo_chunk_size,
            **opts, **self._normalisers(inputs, mask, sft, mode),
        )  # fmt: skip
        with self.accelerator.autocast():
            loss, metrics = model(input_ids=input_ids, attention_mask=attention_mask,
                                  rgpo_loss=spec, **multimodal_inputs(inputs))
        self.rgpo_fused_calls += 1
        self._log_fused_metrics(metrics, mode)
        return loss

    def _log_fused_metrics(self, m: dict[str, torch.Tensor], mode: str) -> None:
        """TRL's metric names, as global means over processes (sums and counts reduced)."""
        n_pol = m["tokens/policy"].float()
        rows = {"clip_ratio/low_mean": m["clip_frac/low"],
                "clip_ratio/high_mean": m["clip_frac/high"]}
        rows["clip_ratio/region_mean"] = m["clip_frac/low"] + m["clip_frac/high"]
        if self.beta != 0.0:
            rows["kl"] = m["kl/mean"]
        names = list(rows)
        vals = [rows[k].float() * n_pol for k in names] + [n_pol]
        if "entropy/mean" in m:
            n_act = n_pol + m["tokens/sft"].float()
            names.append("entropy")
            vals += [m["entropy/mean"].float() * n_act, n_act]
        dev = self.accelerator.device
        tot = self.accelerator.reduce(torch.stack(vals).to(dev), reduction="sum")
        for i, name in enumerate(names[: len(rows)]):
            self._metrics[mode][name].append((tot[i] / tot[len(rows)].clamp(min=1)).item())
        if "entropy/mean" in m:
            self._metrics[mode]["entropy"].append((tot[-2] / tot[-1].clamp(min=1)).item())
        if m["tokens/sft"] > 0 or self.rgpo_guidance is not None:
            self._metrics[mode]["loss/sft"].append(float(m["loss/sft"]))

    # ------------------------------------------------------------------ RGPO guidance

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rgpo_last_rewards = rewards
        return rewards

    def _combined_rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        w = self.reward_weights.to(rewards_per_func.device)
        return (rewards_per_func * w.unsqueeze(0)).nansum(dim=1)

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.rgpo_guidance is None or not self.model.training:
            return out
        rewards = self._combined_rewards(self._rgpo_last_rewards).float().cpu()
        return self._rgpo_guide(inputs, out, rewards)

    def _uid(self, row: dict) -> str:
        if row.get("uid"):
            return str(row["uid"])
        return hashlib.sha1(repr(row["prompt"]).encode()).hexdigest()[:16]

    def _hinted_prompt(self, prompt, hint: str):
        tmpl = self.rgpo_guidance.hint_template
        if isinstance(prompt, str):
            return user_message(prompt, hint, tmpl)
        msgs = [dict(m) for m in prompt]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        if not isinstance(msgs[last]["content"], str):
            raise ValueError("RGPO guidance needs text user messages")
        msgs[last]["content"] = user_message(msgs[last]["content"], hint, tmpl)
        return msgs

    def _decode(self, prompts, completion_ids):
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        if isinstance(prompts[0], str):
            return texts
        return [[{"role": "assistant", "content": t}] for t in texts]

    def _rgpo_guide(self, inputs: list[dict], out: dict, rewards: torch.Tensor) -> dict:
        """The guided round (rgpo_fast.guided_round) on TRL's batch: TRL's generation path
        samples, TRL's reward functions score; accepted responses become SFT rows."""
        cfg, tok, group_size = self.rgpo_guidance, self._tokenizer, self.num_generations
        B = len(inputs)
        if multimodal_inputs(out):
            raise ValueError("RGPO guidance in TRL re-prompts through TRL's text generation "
                             "path: image prompts are not supported there (the rgpo_fast "
                             "trainer guides them: python -m rgpo_fast.train)")
        if B % group_size:
            raise ValueError(f"generation batch of {B} rows is not made of groups of "
                             f"{group_size}")  # fmt: skip
        heads = [inputs[g * group_size] for g in range(B // group_size)]  # a row per prompt
        rows = rewards.view(-1, group_size).tolist()
        pmask, pids = out["prompt_mask"].bool().cpu(), out["prompt_ids"].cpu()
        col = self.rgpo_rationale_column
        groups = [PromptGroup(uid=self._uid(h), rationale=str(h.get(col) or ""),
                              prompt_ids=pids[g * group_size][pmask[g * group_size]].tolist(),
                              rewards=rows[g], group=g)
                  for g, h in enumerate(heads)]  # fmt: skip
        hinted: dict[int, Any] = {}  # group index -> hinted prompt (text or messages)

        def hinted_prompt(group: PromptGroup, hint: str) -> list[int]:
            hinted[group.group] = self._hinted_prompt(heads[group.group]["prompt"], hint)
            ids, _, _ = self._tokenize_prompts([hinted[group.group]])
            return list(ids[0])

        def generate(prompts: list[list[int]], k: int, seed_offset: int,
                     vision: list | None = None) -> list[list[Completion]]:  # fmt: skip
            flat = [p for p in prompts for _ in range(k)]  # TRL's sampler seeds itself
            ids, _ = self._generate_single_turn(flat, None, {}, k)
            return [[Completion(token_ids=list(ids[j * k + c]), logprobs=None)
                     for c in range(k)] for j in range(len(prompts))]  # fmt: skip

        def score(groups: list[PromptGroup], samples: list[list[Sample]]) -> list[list[float]]:
            # Against the unguided prompt: the reward judges the answer, not the hint.
            g_inputs = [heads[g.group] for g, row in zip(groups, samples) for _ in row]
            g_prompts = [hinted[g.group] for g, row in zip(groups, samples) for _ in row]
            ids = [list(s.response_ids) for row in samples for s in row]
            completions = self._decode(g_prompts, ids)
            flat = self._combined_rewards(super(RGPOFusedGRPOTrainer, self)._calculate_rewards(
                g_inputs, [h["prompt"] for h in g_inputs], completions, ids)).float().cpu()
            k = len(samples[0])
            return flat.view(len(groups), k).tolist()

        io = Callbacks(tokenizer=tok, group_size=group_size, hinted_prompt=hinted_prompt,
                       generate=generate, score=score)
        # The trainer's own mode (rgpo_fast/guidance_modes.py). TRL's rows hold the unguided
        # samples (the groups carry none): what rgpo adds (transferred samples) becomes new
        # rows; a group ghpo sampled again replaces its rows.
        result = GUIDANCE.get(cfg.guidance).guide(groups, self.rgpo_levels, cfg, io)
        for uid, level in result.level_updates.items():
            self.rgpo_levels.set(uid, level)
        regrouped = [g for g in groups if g.samples]  # GHPO: failed groups sampled again
        if regrouped:
            out = replace_group_rows(out, regrouped, group_size, tok.pad_token_id,
                                     self.max_completion_length, self.scale_rewards)
        transferred = [s for s in result.samples if s.kind == "transferred"]
        new_prompts = [t.prompt_ids for t in transferred]
        new_completions = [t.response_ids[: self.max_completion_length] for t in transferred]
        for name, value in result.stats.items():  # guided/prompts, accepted, copies, ...
            self._metrics["train"][name].append(float(value))
        self._metrics["train"]["guided/transferred"].append(float(len(new_completions)))
        return append_sft_rows(out, new_prompts, new_completions, tok.pad_token_id)

    def _prepare_inputs(self, generation_batch):
        """As TRL's, but splits a generation batch whose row count changed (transferred rows
        appended) into `steps_per_generation` near-equal parts instead of equal ones."""
        if self.rgpo_guidance is None or not self.model.training:
            return super()._prepare_inputs(generation_batch)
        spg = self.args.steps_per_generation
        if self._step % (spg * self.num_iterations) == 0 or self._buffered_inputs is None:
            batch = shuffle_sequence_dict(self._generate_and_score_completions(generation_batch))
            self._buffered_inputs = split_rows(batch, spg)
        return self._buffered_inputs[self._step % spg]


# ----------------------------------------------------------------------------- batch helpers

# (B, C) tensors aligned with completion tokens, and the value a transferred row gets.
_COMPLETION_FILL = {"completion_ids": None, "completion_mask": 1, "old_per_token_logps": 0.0,
                    "ref_per_token_logps": 0.0, "sampling_per_token_logps": 0.0,
                    "importance_sampling_ratio": 1.0, "tool_mask": 1}  # fmt: skip


def _widen(t: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    """(B, w) -> (B, width), filled with `value` on the left (prompts) or right."""
    extra = width - t.shape[1]
    if extra == 0:
        return t
    fill = torch.full((t.shape[0], extra), value, dtype=t.dtype, device=t.device)
    return torch.cat([fill, t] if left else [t, fill], dim=1)


def append_sft_rows(out: dict, prompts: list[list[int]], completions: list[list[int]],
                    pad_id: int) -> dict:  # fmt: skip
    """Append transferred rows (unpadded prompt / completion ids) to TRL's batch dict.

    Prompts are left-padded and completions right-padded to the (possibly wider) batch
    width; new rows get advantage 0; `rgpo_sft_mask` (B,) marks them and
    `rgpo_num_sft_tokens` (0-dim) counts their tokens for the SFT normaliser.
    """
    for k in _MULTIMODAL_KEYS:
        if out.get(k) is not None:
            raise ValueError(f"RGPO guidance does not support multimodal batches ({k})")
    B = out["prompt_ids"].shape[0]
    dev = out["prompt_ids"].device
    n = len(completions)
    res = dict(out)
    res[SFT_MASK_KEY] = torch.cat([torch.zeros(B, dtype=torch.bool),
                                   torch.ones(n, dtype=torch.bool)]).to(dev)  # fmt: skip
    res[SFT_TOKENS_KEY] = torch.tensor(float(sum(len(c) for c in completions)), device=dev)
    if n == 0:
        return res
    P = max(out["prompt_ids"].shape[1], max(len(p) for p in prompts))
    C = max(out["completion_ids"].shape[1], max(len(c) for c in completions))

    new_pids = torch.full((n, P), pad_id, dtype=out["prompt_ids"].dtype)
    new_pmask = torch.zeros((n, P), dtype=out["prompt_mask"].dtype)
    for i, p in enumerate(prompts):
        new_pids[i, P - len(p):] = torch.tensor(p)
        new_pmask[i, P - len(p):] = 1
    res["prompt_ids"] = torch.cat([_widen(out["prompt_ids"], P, pad_id, True), new_pids.to(dev)])
    res["prompt_mask"] = torch.cat([_widen(out["prompt_mask"], P, 0, True), new_pmask.to(dev)])
    for key, value in _COMPLETION_FILL.items():
        t = out.get(key)
        if t is None:
            continue
        pad_value = pad_id if key == "completion_ids" else 0
        new = torch.full((n, C), pad_value, dtype=t.dtype)
        for i, c in enumerate(completions):
            new[i, : len(c)] = torch.tensor(c) if key == "completion_ids" else value
        res[key] = torch.cat([_widen(t, C, pad_value, False), new.to(dev)])
    adv = out["advantages"]
    zeros = torch.zeros((n,) + tuple(adv.shape[1:]), dtype=adv.dtype, device=dev)
    if adv.dim() == 2:
        adv = _widen(adv, C, 0.0, False)
        zeros = torch.zeros((n, C), dtype=adv.dtype, device=dev)
    res["advantages"] = torch.cat([adv, zeros])
    return res


# Per-token values TRL computes from a row's prompt and completion at generation time.
_LOGPROB_KEYS = ("old_per_token_logps", "ref_per_token_logps", "sampling_per_token_logps",
                 "importance_sampling_ratio")


def group_advantages(rewards: list[float], scale_rewards: str) -> torch.Tensor:
    """TRL's advantages of one group (sum_then_normalize): r - mean(r), divided by the
    group's std + 1e-4 unless scale_rewards is "none"."""
    from trl.trainer.utils import nanstd

    r = torch.tensor(rewards, dtype=torch.float32)
    adv = r - r.mean()
    if scale_rewards != "none":
        adv = adv / (nanstd(r) + 1e-4)
    return adv


def replace_group_rows(out: dict, groups: list, group_size: int, pad_id: int,
                       max_completion: int, scale_rewards: str) -> dict:  # fmt: skip
    """The rows of each group (a PromptGroup whose `samples` replaced it: GHPO) replaced in
    TRL's batch dict: the group's prompt left-padded, its completions right-padded (cut at
    `max_completion`), advantages recomputed from its rewards (`group_advantages`); the
    batch widens where needed and `num_items_in_batch` counts the new completion tokens."""
    for k in _MULTIMODAL_KEYS:
        if out.get(k) is not None:
            raise ValueError(f"GHPO guidance does not support multimodal batches ({k})")
    stale = [k for k in _LOGPROB_KEYS if out.get(k) is not None]
    if stale:  # computed for the old rows; the new ones would need another forward
        raise ValueError(f"GHPO guidance in TRL cannot replace rows whose {', '.join(stale)} "
                         "TRL already computed")
    res = dict(out)
    dev = out["prompt_ids"].device
    prompts = {g.group: list(g.samples[0].prompt_ids) for g in groups}
    comps = {g.group: [list(s.response_ids[:max_completion]) for s in g.samples] for g in groups}
    P = max(out["prompt_ids"].shape[1], max(len(p) for p in prompts.values()))
    C = max(out["completion_ids"].shape[1], max(len(c) for cs in comps.values() for c in cs))

    # The rows below are written in place: copies, never views of `out`'s tensors.
    res["prompt_ids"] = _widen(out["prompt_ids"], P, pad_id, True).clone()
    res["prompt_mask"] = _widen(out["prompt_mask"], P, 0, True).clone()
    keys = [k for k in _COMPLETION_FILL if out.get(k) is not None and k not in _LOGPROB_KEYS]
    for key in keys:
        res[key] = _widen(out[key], C, pad_id if key == "completion_ids" else 0, False).clone()
    adv = out["advantages"].clone()
    for g in groups:
        if len(g.samples) != group_size:
            raise ValueError(f"group {g.group} has {len(g.samples)} samples, not {group_size}")
        rows = range(g.group * group_size, (g.group + 1) * group_size)
        p = torch.tensor(prompts[g.group], device=dev)
        new_adv = group_advantages(g.rewards, scale_rewards).to(dev, adv.dtype)
        for j, (row, c) in enumerate(zip(rows, comps[g.group])):
            res["prompt_ids"][row] = pad_id
            res["prompt_ids"][row, P - len(p):] = p
            res["prompt_mask"][row] = 0
            res["prompt_mask"][row, P - len(p):] = 1
            for key in keys:
                res[key][row] = pad_id if key == "completion_ids" else 0
                if key == "completion_ids":
                    res[key][row, : len(c)] = torch.tensor(c, device=dev)
                else:
                    res[key][row, : len(c)] = _COMPLETION_FILL[key]
            adv[row] = new_adv[j]
    res["advantages"] = adv
    if out.get("num_items_in_batch") is not None:
        res["num_items_in_batch"] = res["completion_mask"].sum()
    return res


def split_rows(batch: dict, k: int) -> list[dict]:
    """Split every row-indexed value of `batch` into k near-equal parts (0-dim tensors and
    scalars are shared)."""
    B = len(batch["prompt_ids"])
    parts = torch.arange(B).tensor_split(k)
    out = []
    for idx in parts:
        chunk = {}
        for key, v in batch.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                chunk[key] = v[idx.to(v.device)]
            elif isinstance(v, list):
                chunk[key] = [v[i] for i in idx.tolist()]
            else:
                chunk[key] = v
        out.append(chunk)
    return out
