"""Run configuration: one dataclass per concern, YAML presets, CLI overrides.

Resolution order (later wins): dataclass defaults <- `--config FILE` (YAML) <- `--algo NAME`
(preset; the YAML's `algo:` fields stay as overrides on top of it) <- shortcut flags
(`--model`, `--data`, ...) <- dotted overrides (`--rollout.n 8`). Every field has a help
text, so `--help` lists the whole configuration. Checks live in `__post_init__` and name
the bad field; the resolved config is saved with every run (config.yaml).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rgpo_fast.algos.presets import AlgoConfig, get_preset
from rgpo_fast.errors import UserError


class ConfigError(UserError, ValueError):
    """A user-facing configuration problem (exit code 2, one `error:` line)."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ModelConfig:
    path: str | None = field(
        default=None,
        metadata=_help(
            "HF model directory or hub id (local only here). None: build the tiny Qwen2 model."
        ),
    )
    tiny: str = field(
        default="qwen2",
        metadata=_help("Which tiny model path=null builds: qwen2 (a causal LM), qwen2-vl (a "
                       "vision-language model with a small vision tower, for image data)."),
    )
    freeze_vision: bool = field(
        default=True,
        metadata=_help("Vision-language models: keep the vision tower (and its projector) "
                       "fixed; false trains it with the language model."),
    )
    tiny_layers: int = field(default=2, metadata=_help("Tiny model: decoder layers."))
    tiny_hidden: int = field(default=128, metadata=_help("Tiny model: hidden size."))
    tiny_heads: int = field(default=4, metadata=_help("Tiny model: attention heads."))
    tiny_kv_heads: int = field(default=2, metadata=_help("Tiny model: key/value heads (GQA)."))
    tiny_intermediate: int = field(default=256, metadata=_help("Tiny model: MLP width."))
    cache_dir: str | None = field(
        default=None,
        metadata=_help(
            "Where the tiny model is built and cached "
            "(default $RGPO_FAST_CACHE or ~/.cache/rgpo_fast)."
        ),
    )
    dtype: str = field(
        default="auto",
        metadata=_help(
            "Parameter dtype: auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16."
        ),
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata=_help(
            "Recompute decoder-layer activations in backward (less memory, ~30% more compute)."
        ),
    )
    attn_implementation: str = field(
        default="auto",
        metadata=_help(
            "auto (flash_attention_2 if installed on GPU, else sdpa), sdpa, eager, "
            "flash_attention_2."
        ),
    )
    liger: str = field(
        default="auto",
        metadata=_help(
            "Liger-Kernel RMSNorm/RoPE/SwiGLU patches: auto (on GPU when installed), on, off."
        ),
    )
    pack_sequences: str = field(
        default="auto",
        metadata=_help(
            "Padding-free policy forward (all sequences in one row): auto (on with "
            "flash_attention_2's varlen kernels), on, off."
        ),
    )

    def __post_init__(self) -> None:
        _choice("model", "dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        _choice(
            "model",
            "attn_implementation",
            self.attn_implementation,
            ("auto", "sdpa", "eager", "flash_attention_2"),
        )
        _choice("model", "liger", self.liger, ("auto", "on", "off"))
        _choice("model", "pack_sequences", self.pack_sequences, ("auto", "on", "off"))
        _choice("model", "tiny", self.tiny, ("qwen2", "qwen2-vl"))
        for name in (
            "tiny_layers",
            "tiny_hidden",
            "tiny_heads",
            "tiny_kv_heads",
            "tiny_intermediate",
        ):
            _positive("model", name, getattr(self, name))
        if self.tiny_hidden % self.tiny_heads or self.tiny_heads % self.tiny_kv_heads:
            raise ConfigError(
                "model.tiny_hidden must divide by tiny_heads, and tiny_heads by tiny_kv_heads"
            )


@dataclass
class DataConfig:
    train: str = field(
        default="countdown:mixed",
        metadata=_help(
            "RL prompts: a built-in task `<countdown|arith>:<split>` or a "
            ".jsonl/.json/.parquet/.csv file (problem, answer, optional rationale)."
        ),
    )
    sft: str = field(
        default="countdown:warm",
        metadata=_help("Warm-start SFT data (same forms as train; empty string: no SFT)."),
    )
    eval: str = field(
        default="countdown:easy,countdown:hard",
        metadata=_help(
            "Comma-separated held-out eval sets; built-in tasks use their held-out partition."
        ),
    )
    n_train: int = field(
        default=2048, metadata=_help("Problems generated for built-in task sets.")
    )
    n_eval: int = field(
        default=256,
        metadata=_help("Problems per eval set (built-in tasks, or the first N rows of a file)."),
    )
    eval_seed: int = field(
        default=0,
        metadata=_help("Seed of the built-in tasks' held-out eval problems; apart from "
                       "train.seed, so runs of every seed and algorithm are scored on the "
                       "same problems and their differences pair up."),
    )
    reward: str = field(
        default="auto",
        metadata=_help(
            "Reward function: auto (each dataset's own: a built-in task's verifier, else "
            "exact), exact, math_verify, countdown, format, or your own as "
            "package.module:function or path/to/file.py:function (fn(completion, answer) -> "
            "number in [0, 1], or in the function's reward_range attribute)."
        ),
    )
    reward_timeout_s: float = field(
        default=5.0,
        metadata=_help("Time limit of every reward call (s); a call over it scores the "
                       "bottom of the reward's range and is counted (reward/timeouts)."),
    )
    reward_errors: str = field(
        default="stop",
        metadata=_help("A reward that raises, returns a non-number, NaN or a value outside "
                       "its range: stop (the run, naming the reward, sample and value) or "
                       "zero (score the sample the bottom of the range, count it: "
                       "reward/zeroed)."),
    )
    format_weight: float = field(
        default=0.0,
        metadata=_help("Weight of the format reward mixed into the reward (0 = correctness only)."),
    )
    system_prompt: str | None = field(default=None, metadata=_help("Optional system message."))
    max_prompt_tokens: int = field(
        default=512, metadata=_help("Prompts longer than this (tokens, image tokens included) "
                                    "are dropped with a warning.")
    )
    problem_field: str = field(default="problem",
                               metadata=_help("Data files: the column holding the problem."))
    answer_field: str = field(default="answer",
                              metadata=_help("Data files: the column holding the answer."))
    rationale_field: str = field(
        default="rationale",
        metadata=_help("Data files: the column holding the reference rationale (a file "
                       "without it: never guided)."))
    images_field: str = field(
        default="images",
        metadata=_help("Data files: the column holding a row's images (paths relative to the "
                       "file, bytes or images; a file without it: text only)."))

    def __post_init__(self) -> None:
        if not self.train:
            raise ConfigError("data.train must name a dataset")
        for name in ("problem_field", "answer_field", "rationale_field", "images_field"):
            if not getattr(self, name):
                raise ConfigError(f"data.{name} must name a column")
        _positive("data", "n_train", self.n_train)
        _positive("data", "n_eval", self.n_eval)
        _positive("data", "max_prompt_tokens", self.max_prompt_tokens)
        if not 0.0 <= self.format_weight <= 1.0:
            raise ConfigError(f"data.format_weight={self.format_weight} must be in [0, 1]")
        from rgpo_fast.rewards import REWARDS
        from rgpo_fast.rewards.contract import ON_ERROR, is_import_spec

        if not is_import_spec(self.reward):  # module:function is imported at start-up
            _choice("data", "reward", self.reward, ("auto", *REWARDS.names()))
        _positive("data", "reward_timeout_s", self.reward_timeout_s)
        _choice("data", "reward_errors", self.reward_errors, ON_ERROR)


@dataclass
class RolloutConfig:
    engine: str = field(
        default="hf",
        metadata=_help("Rollout engine: hf (any device) or vllm (colocated, GPU only)."),
    )
    n: int = field(default=8, metadata=_help("G: samples per prompt (group size)."))
    max_new_tokens: int = field(default=48, metadata=_help("Response length limit (tokens)."))
    temperature: float = field(default=1.0, metadata=_help("Sampling temperature."))
    top_p: float = field(default=1.0, metadata=_help(
        "Nucleus sampling threshold; the trainer's log-probs are then those of the truncated "
        "distribution the samples came from."))
    top_k: int = field(default=0, metadata=_help(
        "Top-k sampling (0 = off), applied before top_p; the trainer's log-probs follow it."))
    max_batch_size: int = field(
        default=256, metadata=_help("hf engine: sequences decoded together.")
    )
    gpu_memory_utilization: float = field(
        default=0.4, metadata=_help("vllm: fraction of GPU memory for weights + KV cache.")
    )
    tensor_parallel_size: int = field(
        default=1,
        metadata=_help(
            "vllm: tensor-parallel size per engine. Only 1 is supported: the ranks of a TP "
            "group would have to submit identical requests, and each rank samples its own "
            "prompts."
        ),
    )
    sync_bucket_mb: int = field(
        default=512,
        metadata=_help("Weight sync: bytes per bucket of full tensors loaded at once (MB)."),
    )
    max_hint_tokens: int = field(
        default=512,
        metadata=_help(
            "Room for a hint (tokens) in a guided prompt: a hinted prompt longer than "
            "data.max_prompt_tokens + this is not guided (counted in guided/too_long)."
        ),
    )
    vllm_max_model_len: int | None = field(
        default=None,
        metadata=_help(
            "vllm: max_model_len (default data.max_prompt_tokens + rollout.max_hint_tokens "
            "when the algorithm hints + rollout.max_new_tokens)."
        ),
    )

    def __post_init__(self) -> None:
        _choice("rollout", "engine", self.engine, ("hf", "vllm"))
        _positive("rollout", "n", self.n)
        if self.n < 2:
            raise ConfigError(
                f"rollout.n={self.n}: with one sample per prompt every group-relative "
                "advantage is 0 and nothing is learned; use rollout.n >= 2"
            )
        _positive("rollout", "max_new_tokens", self.max_new_tokens)
        _positive("rollout", "max_batch_size", self.max_batch_size)
        _positive("rollout", "tensor_parallel_size", self.tensor_parallel_size)
        if self.tensor_parallel_size != 1:
            raise ConfigError(
                f"rollout.tensor_parallel_size={self.tensor_parallel_size} is not supported: "
                "every rank of a vLLM tensor-parallel group must submit identical requests, "
                "and each trainer rank samples its own prompts; use 1 (one engine per GPU)"
            )
        if self.max_hint_tokens < 0:
            raise ConfigError(f"rollout.max_hint_tokens={self.max_hint_tokens} must be >= 0")
        if self.vllm_max_model_len is not None:
            _positive("rollout", "vllm_max_model_len", self.vllm_max_model_len)
        _positive("rollout", "sync_bucket_mb", self.sync_bucket_mb)
        if self.temperature <= 0:
            raise ConfigError(f"rollout.temperature={self.temperature} must be > 0 for RL sampling")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"rollout.top_p={self.top_p} must be in (0, 1]")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"rollout.top_k={self.top_k!r} must be an int >= 0 (0 = off)")
        if not 0 < self.gpu_memory_utilization < 1:
            raise ConfigError("rollout.gpu_memory_utilization must be in (0, 1)")


@dataclass
class OptimConfig:
    lr: float = field(default=3e-4, metadata=_help("AdamW learning rate of the RL phase."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    beta1: float = field(default=0.9, metadata=_help("AdamW beta1."))
    beta2: float = field(default=0.99, metadata=_help("AdamW beta2."))
    eps: float = field(default=1e-8, metadata=_help("AdamW epsilon."))
    grad_clip: float = field(default=1.0, metadata=_help("Max global grad norm (0 = off)."))
    warmup_steps: int = field(default=0, metadata=_help("Linear LR warm-up steps."))
    schedule: str = field(
        default="cosine",
        metadata=_help("LR schedule after warm-up: constant, cosine, linear (to 10%)."),
    )

    def __post_init__(self) -> None:
        _positive("optim", "lr", self.lr)
        for name in ("beta1", "beta2"):  # AdamW's averages: 1 would never forget the start
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"optim.{name}={getattr(self, name)} must be in [0, 1)")
        _positive("optim", "eps", self.eps)  # 0 divides by zero where a gradient is 0
        _choice("optim", "schedule", self.schedule, ("constant", "cosine", "linear"))
        if self.grad_clip < 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ConfigError(
                "optim.grad_clip, optim.warmup_steps and optim.weight_decay must be >= 0"
            )


@dataclass
class TrainConfig:
    output_dir: str = field(default="runs/default", metadata=_help("Run directory."))
    max_steps: int = field(default=100, metadata=_help("RL steps (optimizer updates)."))
    prompts_per_step: int = field(
        default=16, metadata=_help("Prompts per RL step, global over data-parallel ranks.")
    )
    micro_batch_size: int = field(
        default=64,
        metadata=_help(
            "Sequences per forward/backward (gradient accumulation inside a step); rows of "
            "similar length share a micro-batch, so each is padded only to its longest row."
        ),
    )
    ppo_epochs: int = field(
        default=1,
        metadata=_help(
            "Passes over each step's rollout batch (verl ppo_epochs, TRL num_iterations); "
            "with more than one update per batch the old log-probs are computed before the "
            "first, so the ratio and its clip act."
        ),
    )
    mini_batches: int = field(
        default=1,
        metadata=_help(
            "Optimizer steps per pass: the step's prompts are split into this many "
            "mini-batches, a prompt's samples together (verl ppo_mini_batch_size, TRL "
            "steps_per_generation); at most train.prompts_per_step."
        ),
    )
    seed: int = field(default=0, metadata=_help("Seed of data order, sampling and init."))
    resume: bool = field(default=False, metadata=_help("Continue from the latest checkpoint."))
    save_every: int = field(
        default=10, metadata=_help("Checkpoint every N steps (0 = only at the end).")
    )
    keep_checkpoints: int = field(default=2, metadata=_help("Complete checkpoints kept on disk."))
    save_hf_every: int = field(
        default=0,
        metadata=_help(
            "Also write the policy as a Hugging Face model directory (safetensors + tokenizer) "
            "to <output_dir>/hf/step_<n> every N steps (0 = only <output_dir>/final at the end)."
        ),
    )
    sft_steps: int = field(
        default=1000, metadata=_help("Warm-start SFT steps before RL (0 = none).")
    )
    sft_batch_size: int = field(default=32, metadata=_help("SFT sequences per step."))
    sft_micro_batch_size: int = field(
        default=32,
        metadata=_help(
            "SFT sequences per forward/backward; rows are grouped by length, so with hints in "
            "the prompt a small value (8) spares short rows the padding to long ones "
            "(docs/trainer.md)."
        ),
    )
    sft_lr: float = field(default=3e-3, metadata=_help("SFT learning rate (cosine to 10%)."))
    sft_hint_prob: float = field(
        default=0.0,
        metadata=_help(
            "Share of SFT prompts shown with a random rationale prefix as hint in the prompt, "
            "so the model learns to restate and continue it (for algo.hint_placement=prompt; "
            "a hint placed in the response needs none)."
        ),
    )
    max_nonfinite_skips: int = field(
        default=0,
        metadata=_help(
            "A NaN/inf loss or gradient norm stops the run with an error naming the phase and "
            "step (0, the default); N > 0: drop up to N such updates in the run (counted in "
            "metrics nonfinite/skipped and summary.json totals), the next one stops it. "
            "Weights are checked before every checkpoint and export either way."
        ),
    )
    device: str = field(default="auto", metadata=_help("auto, cpu or cuda."))
    impl: str = field(
        default="auto", metadata=_help("Fused-loss backend: auto, torch, triton, cuda, cpp.")
    )
    threads: int = field(
        default=1,
        metadata=_help(
            "CPU threads per process (0 = torch default). 1 by default: the tiny model's ops are "
            "too small to gain from intra-op threads, and spinning OpenMP threads slow a "
            "shared machine down (docs/trainer.md)."
        ),
    )

    def __post_init__(self) -> None:
        for name in ("max_steps", "prompts_per_step", "micro_batch_size", "sft_batch_size",
                     "sft_micro_batch_size", "ppo_epochs", "mini_batches"):
            _positive("train", name, getattr(self, name))
        if self.mini_batches > self.prompts_per_step:
            raise ConfigError(f"train.mini_batches={self.mini_batches} must be <= "
                              f"train.prompts_per_step={self.prompts_per_step} (a mini-batch "
                              "holds whole prompts)")
        for name in ("save_every", "save_hf_every", "sft_steps", "threads",
                     "max_nonfinite_skips"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 0")
        _positive("train", "keep_checkpoints", self.keep_checkpoints)
        _positive("train", "sft_lr", self.sft_lr)
        if not 0 <= self.sft_hint_prob <= 1:
            raise ConfigError(f"train.sft_hint_prob={self.sft_hint_prob} must be in [0, 1]")
        _choice("train", "device", self.device, ("auto", "cpu", "cuda"))


@dataclass
class EvalConfig:
    every: int = field(
        default=25,
        metadata=_help("Evaluate every N RL steps (0: only before and after training)."),
    )
    pass_k: int = field(
        default=0, metadata=_help("k of pass@k (sampled at eval temperature; 0 = greedy only).")
    )
    mean_k: int = field(
        default=8,
        metadata=_help("k of mean@k: the average success of k samples per problem at "
                       "eval.temperature, reported beside greedy accuracy with its paired "
                       "gain; k times the eval generation of greedy alone (0 = off)."),
    )
    train_problems: int = field(
        default=0,
        metadata=_help("Also score the first N training prompts at every evaluation, as set "
                       "`train` (training accuracy beside held-out shows memorisation; 0 = off)."),
    )
    temperature: float = field(default=1.0, metadata=_help("Sampling temperature of pass@k."))
    max_new_tokens: int | None = field(
        default=None, metadata=_help("Eval response limit (default rollout.max_new_tokens).")
    )

    def __post_init__(self) -> None:
        if self.every < 0 or self.pass_k < 0 or self.mean_k < 0 or self.train_problems < 0:
            raise ConfigError("eval.every, eval.pass_k, eval.mean_k and eval.train_problems "
                              "must be >= 0")
        if self.max_new_tokens is not None:
            _positive("eval", "max_new_tokens", self.max_new_tokens)
        if (self.pass_k or self.mean_k) and not self.temperature > 0:
            raise ConfigError(f"eval.temperature={self.temperature} must be > 0 for pass@k "
                              "and mean@k (they sample)")


@dataclass
class LoggingConfig:
    progress: bool = field(default=True, metadata=_help("Show a progress bar (rank 0)."))
    plots: bool = field(default=True, metadata=_help("Write PNG plots at the end."))
    log_every: int = field(default=1, metadata=_help("Write metrics.jsonl every N steps."))
    report_to: str = field(
        default="jsonl",
        metadata=_help(
            "Metrics sinks, comma-separated: jsonl (metrics.jsonl, always written), "
            "tensorboard (<output_dir>/tensorboard), wandb (offline unless WANDB_API_KEY or "
            "WANDB_MODE says otherwise); the same keys in each."
        ),
    )

    def __post_init__(self) -> None:
        _positive("logging", "log_every", self.log_every)
        from rgpo_fast.trainer.sinks import parse_report_to

        try:
            parse_report_to(self.report_to)
        except ValueError as e:
            raise ConfigError(f"logging.report_to={e}") from None


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "rollout": RolloutConfig,
    "algo": AlgoConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "logging": LoggingConfig,
}


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=lambda: get_preset(**DEFAULT_ALGO))
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for name in SECTIONS:
            sec = getattr(self, name)
            out[name] = sec.to_dict() if hasattr(sec, "to_dict") else dataclasses.asdict(sec)
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# ----------------------------------------------------------------------------- helpers


def _choice(section: str, name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{section}.{name}={value!r} is invalid; valid: {', '.join(valid)}")


def _positive(section: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not value > 0:
        raise ConfigError(f"{section}.{name}={value!r} must be positive")


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(section: str, name: str, value: Any, tp: Any) -> Any:
    """Convert a YAML/CLI value to the declared field type, or raise ConfigError naming it."""
    where = f"{section}.{name}"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return coerce(section, name, value, inner[0])
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} expects a list, got {value!r}")
        return tuple(coerce(section, name, v, args[0]) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where} expects true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where} expects a number, got {value!r}")
        try:
            num = (
                float(value)
                if tp is float
                else int(str(value), 0)
                if isinstance(value, str)
                else value
            )
        except (TypeError, ValueError):
            raise ConfigError(f"{where} expects {tp.__name__}, got {value!r}") from None
        if tp is int and (not isinstance(num, int) or isinstance(num, bool)):
            if isinstance(num, float) and num.is_integer():
                return int(num)
            raise ConfigError(f"{where} expects int, got {value!r}")
        return float(num) if tp is float else num
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} expects a string, got {value!r}")
        return str(value)
    return value


def build_section(section: str, values: dict[str, Any]):
    """Instantiate section `section` from a dict, checking names and types."""
    cls = SECTIONS[section]
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(
            f"unknown config key {section}.{unknown[0]}; valid keys of {section}: "
            f"{', '.join(sorted(types_))}"
        )
    kwargs = {k: coerce(section, k, v, types_[k]) for k, v in values.items()}
    try:
        if section == "algo":
            name = kwargs.pop("name", "rgpo")
            return get_preset(name, **kwargs)
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"malformed YAML in {path}{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must be a mapping of sections, got {type(data).__name__}"
        )
    for key, val in data.items():
        if key not in SECTIONS:
            raise ConfigError(
                f"unknown config section {key!r} in {path}; valid: {', '.join(SECTIONS)}"
            )
        if val is not None and not isinstance(val, dict):
            raise ConfigError(f"config section {key!r} in {path} must be a mapping")
    return {k: dict(v or {}) for k, v in data.items()}


# The algorithm of the built-in default run, when no preset is named: RGPO with the hint as
# the start of the response (the tiny model continues a partial solution; it does not
# restate one from the prompt), the accepted solution trained whole under the hint-free
# prompt with NLL weight 0.1, a copy of the reference at most once per prompt and step
# (docs/learning.md measures why). Naming a preset (`--algo rgpo`) gives that preset's own
# defaults instead.
DEFAULT_ALGO: dict[str, Any] = {
    "name": "rgpo", "hint_placement": "response", "transferred_hint": "trained", "sft_coef": 0.1,
    "copies": "once",
}  # fmt: skip


def resolve(
    file_values: dict[str, dict[str, Any]], algo: str | None, overrides: dict[str, dict[str, Any]]
) -> RunConfig:
    """Merge defaults, file values, the --algo preset and overrides into a RunConfig."""
    merged: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    named = algo is not None or "name" in file_values.get("algo", {})
    if not named:
        merged["algo"].update(DEFAULT_ALGO)
    for src in (file_values, overrides):
        for sec, vals in src.items():
            merged[sec].update(vals)
    if algo is not None:
        merged["algo"]["name"] = algo
    return RunConfig(**{sec: build_section(sec, vals) for sec, vals in merged.items()})

