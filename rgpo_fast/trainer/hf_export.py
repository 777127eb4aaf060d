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

Nothing but an earlier export is ever replaced: every export directory holds a marker file
(EXPORT_MARKER), and a target that exists is refused unless it is empty or holds that
marker, and `overwrite` is set (the trainer sets it for its own `final/` and `hf/step_<n>/`,
rebuilt on resume). A folder of other models, or a run directory, is never touched. The
model is written to a temporary sibling and renamed into place, so a reader never sees half
a model and a failed write leaves the earlier export as it was.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from rgpo_fast import vlm
from rgpo_fast.trainer import run_dir
from rgpo_fast.trainer.distributed import DistInfo, full_state_dict
from rgpo_fast.trainer.nonfinite import check_finite_weights

POLICY_PREFIX = "lm."  # PolicyModule holds the HF model as `lm`
EXPORT_MARKER = "rgpo_fast_export.json"


class ExportTargetError(run_dir.RunDirError):
    """The export's target directory holds something an export must not replace."""


def check_target(out: Path, overwrite: bool) -> None:
    """Raise ExportTargetError unless writing an export to `out` destroys nothing: `out` is
    absent or empty, or an earlier export (its marker) and `overwrite` is set."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportTargetError(f"{out} exists and is not a directory; choose another --out")
    if not any(out.iterdir()):
        return
    if not (out / EXPORT_MARKER).is_file():
        raise ExportTargetError(
            f"{out} is not empty and is not an earlier export (no {EXPORT_MARKER}); nothing "
            "there is replaced: choose another --out")
    if not overwrite:
        raise ExportTargetError(f"{out} holds an earlier export; pass --overwrite to replace "
                                "it, or choose another --out")


def hf_state_dict(policy_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trainer state dict (PolicyModule names) -> the HF model's names."""
    if not all(k.startswith(POLICY_PREFIX) for k in policy_state):
        raise ValueError(f"not a policy state dict: keys must start with {POLICY_PREFIX!r}")
    return {k.removeprefix(POLICY_PREFIX): v for k, v in policy_state.items()}


def write_hf_dir(lm_config, generation_config, tokenizer, state: dict[str, torch.Tensor],
                 out: Path, dtype: torch.dtype | None = None, overwrite: bool = False,
                 source: dict | None = None) -> Path:
    """Build the HF model of `lm_config` on the CPU, load `state` (HF names) into it and
    save it with `tokenizer` (a vision-language model's processor) to `out`, atomically (a
    temporary sibling renamed into place). `out` must pass `check_target(out, overwrite)`;
    `source` (run, step) goes into the marker file."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    check_target(out, overwrite)

    auto = AutoModelForImageTextToText if vlm.is_vision_language(lm_config) else \
        AutoModelForCausalLM  # fmt: skip
    model = auto.from_config(lm_config, dtype=torch.float32)
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
    shutil.rmtree(tmp, ignore_errors=True)  # ours: a leftover of a failed export
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    marker = {"written_by": "rgpo_fast", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "dtype": str(dtype or torch.float32).removeprefix("torch."), **(source or {})}
    (tmp / EXPORT_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    if out.exists():  # empty, or an earlier export (check_target): set aside, then dropped
        old = out.with_name(f".old-{out.name}")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def save_hf(policy: torch.nn.Module, tokenizer, out: Path, info: DistInfo,
            on_failure: str = "") -> Path | None:
    """Gather the policy (collective under FSDP2) and write it to `out` on rank 0. Weights
    holding NaN/inf are never exported (trainer/nonfinite.py); `on_failure` is added to the
    error of a failed write (what is intact, how to write it again)."""
    check_finite_weights(policy, info, f"before the export to {out}")
    state = full_state_dict(policy)  # full tensors on rank 0 (cpu offload)
    lm = policy.lm

    def failure(e: BaseException) -> str:
        shutil.rmtree(out.with_name(f".tmp-{out.name}"), ignore_errors=True)
        return f"cannot write the model to {out}: {run_dir.reason(e)}{on_failure}"

    # The run's own exports (final/, hf/step_<n>/) are rebuilt on resume: overwrite=True,
    # which still refuses a directory that is not an earlier export.
    run_dir.rank0_write(info, lambda: write_hf_dir(
        lm.config, getattr(lm, "generation_config", None), tokenizer, hf_state_dict(state), out,
        dtype=policy.compute_dtype, overwrite=True), failure)  # fmt: skip
    return out if info.is_main else None
