"""Learning benchmark: the one SFT warm start every run starts from, cached as an HF
directory keyed by the settings that shape it."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from learning_settings import DRIVER, ROOT, Settings

SFT_EXAMPLES = 4096  # distinct training problems the warm start draws its batches from


def warm_start(s: Settings, runs: Path) -> float | None:
    """SFT warm-start once, saved as an HF directory; reused while the settings match.
    Returns the seconds it took, or None when a cached one was reused."""
    out = runs / f"warmstart-{s.warm_key()}"
    if (out / "config.json").exists():
        print(f"warm start: reusing {out}", flush=True)
        return None
    t0 = time.perf_counter()
    print(f"warm start: {s.sft_steps} SFT steps on {s.sft_data} -> {out}", flush=True)
    cmd = [sys.executable, str(DRIVER), "--warm-start-worker", str(out),
           "--settings-json", json.dumps(dataclasses.asdict(s))]
    subprocess.run(cmd, check=True, cwd=ROOT)
    took = time.perf_counter() - t0
    print(f"warm start: done in {took:.0f}s", flush=True)
    return took


def warm_start_worker(out: Path, s: Settings) -> None:
    """The warm start itself, in its own process (the driver's --warm-start-worker)."""
    import torch

    from rgpo_fast.trainer.build import load_policy
    from rgpo_fast.trainer.cli import parse_args
    from rgpo_fast.trainer.data_sources import load_source
    from rgpo_fast.trainer.distributed import init_distributed
    from rgpo_fast.trainer.progress import quiet_libraries
    from rgpo_fast.trainer.warm_start import sft_warm_start

    quiet_libraries()
    _, cfg = parse_args([
        "--seed", str(s.warm_seed), "--model.tiny_layers", str(s.tiny_layers),
        "--model.tiny_hidden", str(s.tiny_hidden),
        "--model.tiny_intermediate", str(s.tiny_intermediate),
        "--data.sft", s.sft_data, "--train.sft_steps", str(s.sft_steps),
        "--train.sft_batch_size", str(s.sft_batch_size), "--train.sft_lr", str(s.sft_lr),
        "--train.sft_micro_batch_size", str(s.sft_micro_batch), "--train.sft_hint_prob", "0",
        "--data.n_train", str(SFT_EXAMPLES), "--algo.hint_placement", s.hint_placement,
        "--rollout.max_new_tokens", str(s.max_new_tokens), "--logging.progress", "false"])
    torch.set_num_threads(s.warm_threads)
    torch.manual_seed(s.warm_seed)
    info = init_distributed("cpu")
    policy, lm, tok, _, feats = load_policy(cfg, info)
    examples = load_source(cfg.data.sft, n=cfg.data.n_train, seed=cfg.train.seed + 1,
                           heldout=False, tokenizer=tok,
                           max_prompt_tokens=cfg.data.max_prompt_tokens)
    loss = sft_warm_start(policy, examples, tok, cfg, info)
    print(f"warm start: {feats['params_M']} M params, final SFT loss {loss:.3f}", flush=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "bench_settings.json").write_text(json.dumps(dataclasses.asdict(s), indent=2))
    os.replace(tmp, out)
