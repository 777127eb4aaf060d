"""Tiny models and run settings shared by the trainer tests (a run of a few seconds on one
CPU core)."""

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


def tiny_model_dir(cache_dir: str | Path, layers: int = 1) -> Path:
    """The tests' tiny Qwen2 (width 32, 2 heads, 1 KV head, MLP 64, `layers` layers), built
    once in `cache_dir` and loaded through from_pretrained like any checkpoint."""
    from rgpo_fast.trainer.tiny_model import TinyModelSpec, ensure_tiny_model

    spec = TinyModelSpec(num_hidden_layers=layers, hidden_size=32, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64)
    return ensure_tiny_model(spec, cache_dir)


def tiny_policy(model_dir: str | Path, impl: str = "torch", compute_dtype=None):
    """A PolicyModule (fused-loss forward) over the model in `model_dir`."""
    from rgpo_fast.trainer.policy import PolicyModule
    from rgpo_fast.trainer.tiny_model import load_model_and_tokenizer

    return PolicyModule(load_model_and_tokenizer(model_dir)[0], impl=impl,
                        compute_dtype=compute_dtype)
