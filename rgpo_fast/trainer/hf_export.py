"""The trained policy as a Hugging Face model directory: what other tools load.

Checkpoints (`checkpoints/step_<n>/model.pt`) hold the trainer's state dict, which only
this project resumes from. A run also writes `<output_dir>/final/` at its end (and
`<output_dir>/hf/step_<n>/` every `train.save_hf_every` steps): `config.json`,
`generation_config.json`, `model.safetensors` and the tokenizer, loadable by
`AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` (the path TRL and vLLM take) and
servable by vLLM. The weights are gathered from the FSDP2 shards and written by rank 0, in
the compute dtype (what the rollout engine samples with: bf16 on GPU, fp32 on CPU).
`python -m rgpo_fast.export RUN_DIR [--step N]` writes the same directory from any
checkpoint step.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from rgpo_fast.trainer import run_dir
from rgpo_fast.trainer.distributed import DistInfo, full_state_dict

POLICY_PREFIX = "lm."  # PolicyModule holds the HF model as `lm`


def hf_state_dict(policy_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trainer state dict (PolicyModule names) -> the HF model's names."""
    if not all(k.startswith(POLICY_PREFIX) for k in policy_state):
        raise ValueError(f"not a policy state dict: keys must start with {POLICY_PREFIX!r}")
    return {k.removeprefix(POLICY_PREFIX): v for k, v in policy_state.items()}


def write_hf_dir(lm_config, generation_config, tokenizer, state: dict[str, torch.Tensor],
                 out: Path, dtype: torch.dtype | None = None) -> Path:
    """Build the HF model of `lm_config` on the CPU, load `state` (HF names) into it and
    save it with `tokenizer` to `out`, atomically (a temporary sibling renamed into place,
    so a reader never sees half a model; an existing `out` is replaced)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(lm_config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(lm_config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"state dict does not match the model: missing {sorted(missing)}, "
                         f"unexpected {sorted(unexpected)}")
    if dtype is not None:
        model.to(dtype)
    if generation_config is not None:
        model.generation_config = generation_config
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def save_hf(policy: torch.nn.Module, tokenizer, out: Path, info: DistInfo) -> Path | None:
    """Gather the policy (collective under FSDP2) and write it to `out` on rank 0."""
    state = full_state_dict(policy)  # full tensors on rank 0 (cpu offload)
    lm = policy.lm

    def failure(e: BaseException) -> str:
        shutil.rmtree(out.with_name(f".tmp-{out.name}"), ignore_errors=True)
        return f"cannot write the model to {out}: {run_dir.reason(e)}"

    run_dir.rank0_write(info, lambda: write_hf_dir(
        lm.config, getattr(lm, "generation_config", None), tokenizer, hf_state_dict(state), out,
        dtype=policy.compute_dtype), failure)  # fmt: skip
    return out if info.is_main else None
