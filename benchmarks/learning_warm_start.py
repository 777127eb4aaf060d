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


def copy_rows_fn(examples, hard, tok, cfg, share: float):
    """Rows of one SFT step for `rgpo_fast.trainer.warm_start.sft_warm_start`: the trainer's
    rows with a `share` of the batch replaced by copy rows (a hard problem with its whole
    rationale in the prompt as the hint, the rationale as the target)."""
    from rgpo_fast.data.prompts import encode_prompt, encode_text
    from rgpo_fast.data.types import Sample
    from rgpo_fast.trainer.warm_start import sft_samples

    bs = cfg.train.sft_batch_size

    def rows(rng) -> list:
        n_copy = sum(rng.random() < share for _ in range(bs))
        out = sft_samples([rng.choice(examples) for _ in range(bs - n_copy)], tok, cfg, rng)
        for ex in (rng.choice(hard) for _ in range(n_copy)):
            prompt = encode_prompt(tok, ex.problem, ex.rationale,
                                   hint_template=cfg.algo.hint_template)
            out.append(Sample(prompt_ids=prompt, kind="transferred", reward=1.0,
                              response_ids=encode_text(tok, ex.rationale) + [tok.eos_token_id]))
        return out

    return rows


def warm_start_worker(out: Path, s: Settings) -> None:
    """The warm start itself, in its own process (the driver's --warm-start-worker)."""
    import torch

    from rgpo_fast.data.arith import make_arith
    from rgpo_fast.train import quiet_libraries
    from rgpo_fast.trainer.build import load_policy
    from rgpo_fast.trainer.cli import parse_args
    from rgpo_fast.trainer.data_sources import load_source
    from rgpo_fast.trainer.distributed import init_distributed
    from rgpo_fast.trainer.warm_start import sft_warm_start

    quiet_libraries()
    _, cfg = parse_args([
        "--seed", str(s.warm_seed), "--model.tiny_layers", str(s.tiny_layers),
        "--model.tiny_hidden", str(s.tiny_hidden),
        "--model.tiny_intermediate", str(s.tiny_intermediate),
        "--data.sft", s.sft_data, "--train.sft_steps", str(s.sft_steps),
        "--train.sft_batch_size", str(s.sft_batch_size), "--train.sft_lr", str(s.sft_lr),
        "--train.sft_micro_batch_size", str(s.sft_micro_batch),
        "--rollout.max_new_tokens", str(s.max_new_tokens), "--logging.progress", "false"])
    torch.set_num_threads(s.warm_threads)
    torch.manual_seed(s.warm_seed)
    info = init_distributed("cpu")
    policy, lm, tok, _, feats = load_policy(cfg, info)
    examples = load_source(cfg.data.sft, n=cfg.data.n_train, seed=cfg.train.seed + 1,
                           heldout=False, tokenizer=tok,
                           max_prompt_tokens=cfg.data.max_prompt_tokens)
    rows_fn = None
    if s.sft_copy_share > 0:
        hard = make_arith(s.warm_seed + 2, cfg.data.n_train, "hard")
        rows_fn = copy_rows_fn(examples, hard, tok, cfg, s.sft_copy_share)
    loss = sft_warm_start(policy, examples, tok, cfg, info, rows_fn=rows_fn)
    print(f"warm start: {feats['params_M']} M params, final SFT loss {loss:.3f}", flush=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "bench_settings.json").write_text(json.dumps(dataclasses.asdict(s), indent=2))
    os.replace(tmp, out)
