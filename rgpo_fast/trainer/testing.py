"""Tiny run settings shared by the trainer tests (a run of a few seconds on one CPU core)."""

from __future__ import annotations

from pathlib import Path


def tiny_args(out_dir: str | Path, cache_dir: str | Path, *, steps: int = 2, sft_steps: int = 2,
              extra: list[str] | None = None) -> list[str]:
    """CLI arguments of a minimal run: 1-layer width-32 model, 2 prompts x 2 samples."""
    return [
        "--output-dir", str(out_dir), "--max-steps", str(steps),
        "--model.cache_dir", str(cache_dir),
        "--model.tiny_layers", "1", "--model.tiny_hidden", "32", "--model.tiny_heads", "2",
        "--model.tiny_kv_heads", "1", "--model.tiny_intermediate", "64",
        "--train.sft_steps", str(sft_steps), "--train.sft_batch_size", "4",
        "--train.prompts_per_step", "2", "--rollout.n", "2", "--rollout.max_new_tokens", "12",
        "--data.n_train", "32", "--data.n_eval", "4", "--eval.pass_k", "1",
        "--logging.progress", "false", "--train.threads", "1",
        *(extra or []),
    ]
