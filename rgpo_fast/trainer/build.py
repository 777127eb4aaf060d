"""Build the policy (model + tokenizer + optional speed-ups) and the rollout engine.

Every optional piece (flash-attn varlen attention, Liger-Kernel patches, activation
checkpointing) is chosen here and reported at start-up, so a run says what it used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors import SafetensorError

from rgpo_fast import vlm
from rgpo_fast.trainer.config import ConfigError, RunConfig
from rgpo_fast.trainer.distributed import DistInfo
from rgpo_fast.trainer.policy import PolicyModule, enable_gradient_checkpointing
from rgpo_fast.trainer.tiny_model import (
    TinyModelSpec,
    auto_model_class,
    ensure_tiny_model,
    load_model_and_tokenizer,
)
from rgpo_fast.trainer.tiny_vl_model import TinyVLSpec, ensure_tiny_vl_model


def _installed(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


def flash_attn_problem() -> str | None:
    """None when flash-attn imports; else why not. A flash-attn built against another torch
    is installed but fails to load its extension (an undefined symbol), which is what a
    torch upgrade after `pip install flash-attn` leaves behind."""
    if not _installed("flash_attn"):
        return "flash-attn is not installed (optional: make install-flash-attn)"
    try:
        import flash_attn  # noqa: F401, PLC0415
        import flash_attn_2_cuda  # noqa: F401, PLC0415 (the compiled part)
    except (ImportError, OSError) as e:
        return (f"flash-attn is installed but does not load ({str(e)[:160]}); it was probably "
                "built against another torch: reinstall it with make install-flash-attn")
    return None


def resolve_model_dir(cfg: RunConfig) -> Path:
    if cfg.model.path is None:
        m = cfg.model
        shape = dict(num_hidden_layers=m.tiny_layers, hidden_size=m.tiny_hidden,
                     num_attention_heads=m.tiny_heads, num_key_value_heads=m.tiny_kv_heads,
                     intermediate_size=m.tiny_intermediate, seed=cfg.train.seed)
        try:
            if m.tiny == "qwen2-vl":
                return ensure_tiny_vl_model(TinyVLSpec(**shape), cfg.model.cache_dir)
            return ensure_tiny_model(TinyModelSpec(**shape), cfg.model.cache_dir)
        except OSError as e:  # a read-only or full cache: the model cannot be built there
            where = cfg.model.cache_dir or "the default cache ($RGPO_FAST_CACHE or ~/.cache)"
            raise ConfigError(f"cannot build the tiny model in {where}: "
                              f"{e.strerror or e} ({e.filename or where}); set "
                              "--model.cache_dir to a writable directory") from None
    if cfg.model.tiny != "qwen2":
        raise ConfigError(f"model.tiny={cfg.model.tiny} picks the built-in model, and "
                          f"model.path={cfg.model.path} is set: leave one of them out")
    p = Path(cfg.model.path)
    if not p.is_dir():
        raise ConfigError(
            f"model not found: {cfg.model.path} (a local HF model directory is "
            "required; nothing is downloaded at run time)"
        )
    if not (p / "config.json").is_file():
        raise ConfigError(f"model directory {cfg.model.path} has no config.json")
    return p


def load_failure(cfg: RunConfig, model_dir: Path, e: BaseException) -> str:
    """The error line of a model directory that does not load: which files, and for the
    built-in model's cache, that deleting the entry rebuilds it."""
    weights = sorted(p.name for p in Path(model_dir).glob("*.safetensors"))
    files = f" (weights: {', '.join(weights)})" if weights else ""
    if isinstance(e, SafetensorError):
        what = f"a weight file is damaged or truncated: {e}"
    else:
        what = str(e).splitlines()[0] if str(e) else type(e).__name__
    fix = (f"; it is the built-in model's cache entry: delete {model_dir} and it is rebuilt"
           if cfg.model.path is None else "")
    return f"cannot load model {model_dir}{files}: {what}{fix}"


def compute_dtype(cfg: RunConfig, info: DistInfo) -> torch.dtype:
    """The dtype of forward/backward matmuls (`model.dtype`); parameters stay fp32."""
    return {
        "auto": torch.bfloat16 if info.device.type == "cuda" else torch.float32,
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
    }[cfg.model.dtype]


def resolve_packing(setting: str, attn: str) -> bool:
    """Pack sequences into one row? `auto`: only with flash-attn's varlen kernels. With
    sdpa / eager, HF turns a packed row into a block-diagonal mask over the whole packed
    length, whose cost grows with its square: padding is cheaper there."""
    if setting == "auto":
        return attn == "flash_attention_2"
    return setting == "on"


def load_policy(cfg: RunConfig, info: DistInfo, model_dir: Path | None = None):
    """-> (PolicyModule, the HF model inside it, tokenizer, model dir, features report)."""
    model_dir = model_dir or resolve_model_dir(cfg)
    on_gpu = info.device.type == "cuda"
    dtype = compute_dtype(cfg, info)
    attn = cfg.model.attn_implementation
    flash_problem = flash_attn_problem() if on_gpu or attn == "flash_attention_2" else None
    if attn == "auto":
        attn = "flash_attention_2" if on_gpu and flash_problem is None else "sdpa"
        if on_gpu and flash_problem is not None and _installed("flash_attn") and info.is_main:
            print(f"notice: using sdpa attention: {flash_problem}", flush=True)
    if attn == "flash_attention_2" and flash_problem is not None:
        raise ConfigError(f"model.attn_implementation=flash_attention_2 but {flash_problem}")
    try:
        # fp32 master weights whatever the compute dtype (policy.py, distributed.shard_model).
        lm, tok = load_model_and_tokenizer(model_dir, dtype=torch.float32)
    except (OSError, ValueError, SafetensorError) as e:
        raise ConfigError(load_failure(cfg, model_dir, e)) from None
    if tok.eos_token_id is None:
        raise ConfigError(f"tokenizer of {model_dir} has no eos token")
    lm.config._attn_implementation = attn
    liger = cfg.model.liger == "on" or (cfg.model.liger == "auto" and on_gpu)
    liger_used = False
    if liger:
        if not _installed("liger_kernel"):
            if cfg.model.liger == "on":
                raise ConfigError("model.liger=on but liger-kernel is not installed")
        else:
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            # Only the elementwise kernels: the loss never builds logits, so Liger's
            # cross-entropy patches would have nothing to do.
            _apply_liger_kernel_to_instance(
                model=lm,
                rope=True,
                rms_norm=True,
                swiglu=True,
                cross_entropy=False,
                fused_linear_cross_entropy=False,
            )
            liger_used = True
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(lm)
    lm.to(info.device)
    vision_language = vlm.is_vision_language(lm)
    if vision_language and cfg.model.pack_sequences == "on":
        raise ConfigError("model.pack_sequences=on: a vision-language model's rows are not "
                          "packed (image positions are per row); use auto or off")
    if not vision_language and not cfg.model.freeze_vision:
        raise ConfigError(f"model.freeze_vision=false, but {model_dir} has no vision tower "
                          "to train")
    if cfg.model.freeze_vision:
        vlm.freeze_vision(lm)
    packed = resolve_packing(cfg.model.pack_sequences, attn) and not vision_language
    policy = PolicyModule(
        lm, impl=cfg.train.impl, temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, packed=packed,
        compute_dtype=dtype,
    )
    features = {
        "device": str(info.device),
        "world_size": info.world_size,
        "dtype": str(dtype).split(".")[-1],
        "master_weights": "float32",
        "attention": attn,
        "packed": packed,
        "liger": liger_used,
        "activation_checkpointing": cfg.model.gradient_checkpointing,
        "rollout_engine": cfg.rollout.engine,
        "fused_loss_impl": cfg.train.impl,
        "params_M": round(sum(p.numel() for p in lm.parameters()) / 1e6, 3),
    }
    if vision_language:
        features["vision_tower"] = "frozen" if cfg.model.freeze_vision else "trained"
        features["vision_params_M"] = round(
            sum(p.numel() for p in vlm.vision_tower(lm).parameters()) / 1e6, 3)
    return policy, lm, tok, model_dir, features


def build_engine(cfg: RunConfig, lm, tok, model_dir: Path, info: DistInfo,
                 max_model_len: int | None = None):
    """-> (engine, shares_weights). A single process shares the trainer's module with the hf
    engine (no copy, no sync); distributed ranks decode with a full replica. `max_model_len`
    (vllm) comes from preflight.check_sequence_lengths."""
    if cfg.rollout.engine == "vllm":
        from rgpo_fast.rollout.vllm_colocated import VLLMColocatedEngine

        if max_model_len is None:
            from rgpo_fast.trainer.preflight import check_sequence_lengths

            max_model_len = check_sequence_lengths(cfg, model_dir)
        engine = VLLMColocatedEngine.from_config(str(model_dir), cfg, info, max_model_len,
                                                 eos_token_ids=[tok.eos_token_id])
        return engine, False
    from rgpo_fast.rollout.hf import HFEngine

    shares_weights = not info.enabled
    if shares_weights:
        model = lm
    else:
        # A sampling replica needs no master weights: keep it in the compute dtype (weight
        # sync casts the trainer's fp32 tensors on copy).
        cd = compute_dtype(cfg, info)
        model = auto_model_class(model_dir).from_pretrained(str(model_dir), dtype=cd)
        model = model.to(info.device)
        model.requires_grad_(False)
    engine = HFEngine(model, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                      max_batch_size=cfg.rollout.max_batch_size,
                      compute_dtype=compute_dtype(cfg, info) if shares_weights else None)
    return engine, shares_weights
