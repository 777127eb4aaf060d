"""`python -m rgpo_fast.train`: the end-to-end RL trainer (RGPO and its neighbours).

Launch commands
---------------
Built-in default (tiny Qwen2 built locally, SFT warm-start on arith:easy, RGPO on
arith:mixed; a few minutes on 2 CPU cores):

    python -m rgpo_fast.train                      # == make train

A preset, an algorithm, overrides:

    python -m rgpo_fast.train --config configs/tiny_cpu.yaml --algo grpo --rollout.n 8

One node, 8 GPUs, FSDP2 + colocated vLLM:

    torchrun --nproc_per_node 8 -m rgpo_fast.train --config configs/qwen2.5-math-1.5b_8gpu.yaml

Multi-node (same command on every node; torchrun's rendezvous wires the ranks):

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d \
        --rdzv_endpoint $MASTER_HOST:29500 --rdzv_id rgpo1 \
        -m rgpo_fast.train --config configs/qwen2.5-math-1.5b_8gpu.yaml

Resume after an interruption: add `--resume` (continues from the newest complete
checkpoint). Bad input exits with code 2 and one `error:` line (`--debug` for tracebacks).
See docs/trainer.md for the configuration and the outputs.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

from rgpo_fast.algos import guidance as G
from rgpo_fast.algos.presets import get_preset
from rgpo_fast.batch import Rollout, assemble_batch
from rgpo_fast.data.prompts import encode_prompt, encode_text
from rgpo_fast.rewards import get_reward_fn
from rgpo_fast.rollout.base import SamplingParams
from rgpo_fast.rollout.weight_sync import sync_weights
from rgpo_fast.trainer import checkpoint as ckpt
from rgpo_fast.trainer.build import build_engine, load_policy, resolve_model_dir
from rgpo_fast.trainer.cli import parse_args
from rgpo_fast.trainer.config import ConfigError, RunConfig
from rgpo_fast.trainer.data_sources import (
    DataSourceError,
    PromptSampler,
    check_data_paths,
    eval_sources,
    load_source,
)
from rgpo_fast.trainer.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    init_distributed,
    shard_model,
    shutdown,
)
from rgpo_fast.trainer.evaluation import evaluate_all
from rgpo_fast.trainer.loop import (
    backward_batch,
    compute_logprobs,
    fill_behaviour_logprobs,
    make_optimizer,
    make_scheduler,
    optimizer_step,
)
from rgpo_fast.trainer.metrics import MetricsLog, PhaseTimer, peak_memory_mb, summary_table
from rgpo_fast.trainer.plots import write_plots
from rgpo_fast.trainer.preflight import check_engine, check_sequence_lengths
from rgpo_fast.trainer.rollouts import RolloutContext, collect


class UserError(Exception):
    """Bad input (paths, data): exit code 2, one `error:` line."""


def log(info: DistInfo, *msg, **kw) -> None:
    if info.is_main:
        print(*msg, **kw, flush=True)


def step_seed(seed: int, step: int, rank: int, salt: str = "rl") -> int:
    """Sampling seed of (run seed, step, rank): a resumed run samples what the original would."""
    return zlib.crc32(f"{salt}:{seed}:{step}:{rank}".encode()) & 0x7FFFFFFF


# ------------------------------------------------------------------ SFT warm-start


def sft_rollouts(examples, tok, cfg: RunConfig, rng: random.Random) -> list[Rollout]:
    """Rationale + EOS after the prompt; a share of prompts carries a random rationale
    prefix as hint so the model learns the hint format guidance will use."""
    algo, out = cfg.algo, []
    for ex in examples:
        hint = None
        if rng.random() < cfg.train.sft_hint_prob and ex.rationale:
            segs = G.segment_rationale(ex.rationale, algo.n_segments, algo.segmentation, tok)
            if len(segs) > 1:
                hint = G.build_hint(segs, rng.randint(1, len(segs) - 1))
        prompt = encode_prompt(
            tok, ex.problem, hint, hint_template=algo.hint_template, system=cfg.data.system_prompt
        )
        resp = encode_text(tok, ex.rationale) + [tok.eos_token_id]
        out.append(Rollout(prompt_ids=prompt, response_ids=resp, kind="transferred", reward=1.0))
    return out


def sft_warm_start(policy, examples, tok, cfg: RunConfig, info: DistInfo,
                   rows_fn: Callable[[random.Random], list[Rollout]] | None = None) -> float:
    """Supervised steps on rationales through the same fused loss (sft_coef = 1).

    Each step's global batch is `rows_fn(rng)` (default: `sft_batch_size` random examples
    through `sft_rollouts`); the rng is seeded identically on every rank, each rank trains
    its slice. Benchmarks pass their own rows (e.g. extra copy rows) to reuse this loop."""
    if rows_fn is None:
        def rows_fn(rng: random.Random) -> list[Rollout]:
            batch_ex = [rng.choice(examples) for _ in range(cfg.train.sft_batch_size)]
            return sft_rollouts(batch_ex, tok, cfg, rng)

    steps = cfg.train.sft_steps
    opt = make_optimizer(policy, cfg.train.sft_lr, cfg.optim)
    sched = make_scheduler(opt, steps, max(steps // 20, 1), "cosine")
    sft_algo = get_preset("rgpo", transfer="sft", sft_coef=1.0)
    rng = random.Random(f"sft:{cfg.train.seed}")  # same draws on every rank
    loss = float("nan")
    bar = None
    if cfg.logging.progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="SFT warm-start", dynamic_ncols=True)
    for _ in range(steps):
        local = rows_fn(rng)[info.rank :: info.world_size]
        batch = assemble_batch(local, sft_algo, pad_token_id=tok.pad_token_id)
        m = backward_batch(policy, batch, sft_algo.loss_kwargs(), cfg.train.sft_micro_batch_size,
                           info)
        optimizer_step(policy, opt, sched, cfg.optim.grad_clip)
        loss = m["loss/total"]
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    return loss


# ------------------------------------------------------------------ the run


def run(cfg: RunConfig) -> int:
    info = init_distributed(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    out_dir = Path(cfg.train.output_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(out_dir / "config.yaml")
    t_start = time.perf_counter()
    check_data_paths(cfg)  # fail fast, before minutes of model loading
    check_engine(cfg, info)
    model_dir = resolve_model_dir(cfg)
    max_model_len = check_sequence_lengths(cfg, model_dir)  # before anything is on the GPU

    # --- model, tokenizer, rollout engine (setup.py reports the optional speed-ups)
    policy, lm, tok, model_dir, features = load_policy(cfg, info, model_dir)
    log(info, "start-up: " + ", ".join(f"{k}={v}" for k, v in features.items()))
    reward_fn = get_reward_fn(cfg.data.reward, format_weight=cfg.data.format_weight)

    # --- data
    common = {
        "tokenizer": tok,
        "max_prompt_tokens": cfg.data.max_prompt_tokens,
        "system": cfg.data.system_prompt,
    }
    train_set = load_source(
        cfg.data.train, n=cfg.data.n_train, seed=cfg.train.seed, heldout=False, **common
    )
    sft_set = (
        load_source(
            cfg.data.sft, n=cfg.data.n_train, seed=cfg.train.seed + 1, heldout=False, **common
        )
        if cfg.data.sft and cfg.train.sft_steps
        else []
    )
    eval_sets = {
        name: load_source(
            spec,
            n=cfg.data.n_eval,
            seed=cfg.train.seed,
            heldout=True,
            limit=cfg.data.n_eval,
            **common,
        )[: cfg.data.n_eval]
        for name, spec in eval_sources(cfg.data.eval)
    }
    sampler = PromptSampler(train_set, cfg.train.seed)
    levels = G.HintLevels(cfg.algo.n_segments, cfg.algo.adaptive_levels)

    if info.enabled:
        policy = shard_model(policy, info, compute_dtype=policy.compute_dtype)
    engine, shares = build_engine(cfg, lm, tok, model_dir, info, max_model_len)

    def sync() -> None:
        engine.wake_up(["weights"])
        if not shares:
            # The engine samples in the compute dtype: send that, not the fp32 masters.
            sync_weights(policy, engine, cfg.rollout.sync_bucket_mb, policy.compute_dtype)
        engine.wake_up(["kv_cache"])

    eval_kw = dict(
        max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
        pass_k=cfg.eval.pass_k,
        temperature=cfg.eval.temperature,
        info=info,
        system=cfg.data.system_prompt,
    )
    optimizer = make_optimizer(policy, cfg.optim.lr, cfg.optim)
    scheduler = make_scheduler(
        optimizer, cfg.train.max_steps, cfg.optim.warmup_steps, cfg.optim.schedule
    )
    ckpt_dir = out_dir / "checkpoints"
    metrics_log = MetricsLog(out_dir / "metrics.jsonl")

    # --- resume, or warm-start + baseline eval (saved as step 0, so it is never redone)
    state = None
    if cfg.train.resume:
        state = ckpt.load_latest(ckpt_dir, policy, optimizer, scheduler, info)
        if state is None:
            log(
                info,
                "warning: --resume given but no usable checkpoint found; starting fresh",
                file=sys.stderr,
            )
    if state is not None:
        start_step = int(state["step"])
        sampler.load_state_dict(state["data"])
        levels.load_state_dict(state["hint_levels"])
        eval_before, totals = state["eval_before"], state["totals"]
        if info.is_main:
            metrics_log.truncate_after(start_step)
        engine.sleep(level=2)  # the engine holds the initial weights: replace them
        sync()
    else:
        start_step, totals = (
            0,
            {"guided_prompts": 0, "accepted": 0, "gen_tokens": 0, "rl_time_s": 0.0},
        )
        if info.is_main and metrics_log.path.exists():
            metrics_log.path.unlink()
        if sft_set:
            t0 = time.perf_counter()
            sft_loss = sft_warm_start(policy, sft_set, tok, cfg, info)
            log(
                info,
                f"SFT warm-start: {cfg.train.sft_steps} steps on {cfg.data.sft}, "
                f"final loss {sft_loss:.3f}, {time.perf_counter() - t0:.0f}s",
            )
        engine.sleep(level=2)
        sync()
        eval_before = evaluate_all(
            engine, tok, eval_sets, reward_fn, seed=cfg.train.seed, **eval_kw
        )
        log(info, "eval before RL: " + json.dumps({k: round(v, 3) for k, v in eval_before.items()}))

    def trainer_state(step: int) -> dict:
        return {
            "data": sampler.state_dict(),
            "hint_levels": levels.state_dict(),
            "eval_before": eval_before,
            "totals": dict(totals),
            "step_done": step,
        }

    if state is None:
        ckpt.save_checkpoint(
            ckpt_dir,
            0,
            policy,
            optimizer,
            scheduler,
            trainer_state(0),
            info,
            keep=cfg.train.keep_checkpoints,
        )

    # --- RL
    ctx = RolloutContext(
        engine=engine,
        tokenizer=tok,
        algo=cfg.algo,
        reward_fn=reward_fn,
        sampling=SamplingParams(
            n=cfg.rollout.n,
            max_new_tokens=cfg.rollout.max_new_tokens,
            temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p,
        ),
        system_prompt=cfg.data.system_prompt,
        keep_engine_logprobs=engine.name == "vllm",
        max_prompt_len=cfg.data.max_prompt_tokens + cfg.rollout.max_hint_tokens,
    )
    timer = PhaseTimer(info.device)
    bar = None
    if cfg.logging.progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.train.max_steps, initial=start_step, desc="RL", dynamic_ncols=True)
    per_rank = max(cfg.train.prompts_per_step // info.world_size, 1)
    for step in range(start_step + 1, cfg.train.max_steps + 1):
        t0 = time.perf_counter()
        # Same global prompt list on every rank; each takes its strided share.
        batch_examples = sampler.next(per_rank * info.world_size)[info.rank :: info.world_size]
        with timer("generate"):
            sr = collect(
                ctx,
                batch_examples,
                levels,
                step_seed(cfg.train.seed, step, info.rank),
                refill=lambda: sampler.next(per_rank * info.world_size)[
                    info.rank :: info.world_size
                ],
            )
            engine.sleep(level=2)
        # Hint levels are one table on every rank: merge this step's updates from all ranks.
        for upd in _all_gather_objects(sr.level_updates, info):
            for uid, lvl in upd.items():
                levels.set(uid, lvl)
        with timer("old_logprob"):
            fill_behaviour_logprobs(
                policy, sr.rollouts, tok.pad_token_id, cfg.train.micro_batch_size, info
            )
        batch = assemble_batch(sr.rollouts, cfg.algo, pad_token_id=tok.pad_token_id)
        if batch.rollout_logprobs is not None:
            with timer("old_logprob"):
                batch.set_old_logprobs(
                    compute_logprobs(policy, batch, cfg.train.micro_batch_size, info)
                )
        with timer("update"):
            m = backward_batch(
                policy,
                batch,
                cfg.algo.loss_kwargs(),
                cfg.train.micro_batch_size,
                info,
                max_response_len=cfg.rollout.max_new_tokens,
            )
            m["grad_norm"] = optimizer_step(policy, optimizer, scheduler, cfg.optim.grad_clip)
        with timer("sync"):
            sync()
        row = _step_metrics(
            step, sr, batch, m, timer.pop(), time.perf_counter() - t0, scheduler, info
        )
        if hasattr(engine, "memory_report"):  # colocated vLLM: memory after sleep / wakes
            row.update(engine.memory_report())
        totals["guided_prompts"] += row["guided/prompts"]
        totals["accepted"] += row["guided/accepted"]
        totals["gen_tokens"] += row["tokens/generated"]
        totals["rl_time_s"] += row["time/step_s"]
        if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.train.max_steps:
            ev = evaluate_all(engine, tok, eval_sets, reward_fn, seed=cfg.train.seed, **eval_kw)
            row.update({f"eval/{k}": v for k, v in ev.items()})
        # Metrics row before the checkpoint: a kill in between re-runs the step on resume
        # and truncate_after() drops the orphan row, so every step appears exactly once.
        if info.is_main and (step % cfg.logging.log_every == 0 or step == cfg.train.max_steps):
            metrics_log.write(row)
        if step == cfg.train.max_steps or (
            cfg.train.save_every and step % cfg.train.save_every == 0
        ):
            ckpt.save_checkpoint(
                ckpt_dir,
                step,
                policy,
                optimizer,
                scheduler,
                trainer_state(step),
                info,
                keep=cfg.train.keep_checkpoints,
            )
        if bar is not None:
            bar.set_postfix(
                reward=f"{row['reward/mean']:.2f}",
                acc=f"{row['accuracy/mean']:.2f}",
                guided=int(row["guided/prompts"]),
                accepted=int(row["guided/accepted"]),
            )
            bar.update(1)
    if bar is not None:
        bar.close()

    # --- final evaluation, summary, plots
    eval_after = evaluate_all(engine, tok, eval_sets, reward_fn, seed=cfg.train.seed, **eval_kw)
    totals["tokens_per_s"] = totals["gen_tokens"] / max(totals["rl_time_s"], 1e-9)
    summary = {
        "algo": cfg.algo.name,
        "steps": cfg.train.max_steps,
        "eval": eval_after,
        "eval_before": eval_before,
        "totals": totals,
        "time_s": time.perf_counter() - t_start,
        "world_size": info.world_size,
        "model": cfg.model.path or str(model_dir),
        "features": features,
    }
    if info.is_main:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if cfg.logging.plots:
            write_plots(metrics_log.read(), out_dir / "plots")
        print(summary_table(summary), flush=True)
        print(f"outputs in {out_dir}/ (metrics.jsonl, summary.json, checkpoints/, plots/)")
    barrier(info)
    shutdown(info)
    return 0


def _all_gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def _step_metrics(step, sr, batch, m, phases, step_s, scheduler, info) -> dict:
    """One metrics.jsonl row; sums are global over ranks, means are over unguided samples."""
    unguided = [r for row in sr.unguided_rewards for r in row]
    acc_thr = 0.5
    local = torch.tensor(
        [
            sum(unguided),
            sum(r >= acc_thr for r in unguided),
            len(unguided),
            sr.stats.get("guided/prompts", 0.0),
            sr.stats.get("guided/accepted", 0.0),
            sr.gen_tokens,
            float(batch.attention_mask.sum()),
        ],
        dtype=torch.float64,
    )
    g = all_reduce_sum(local, info).tolist()
    row = {
        "step": step,
        "reward/mean": g[0] / max(g[2], 1),
        "accuracy/mean": g[1] / max(g[2], 1),
        "guided/prompts": g[3],
        "guided/accepted": g[4],
        "loss/total": m["loss/total"],
        "loss/pg": m.get("loss/pg", 0.0),
        "loss/sft": m.get("loss/sft", 0.0),
        "grad_norm": m["grad_norm"],
        "lr": scheduler.get_last_lr()[0],
        "batch/sequences": len(sr.rollouts),
        "tokens/generated": g[5],
        "tokens/trained": g[6],
        "time/step_s": step_s,
        "time/generate_s": phases.get("generate", 0.0),
        "time/old_logprob_s": phases.get("old_logprob", 0.0),
        "time/update_s": phases.get("update", 0.0),
        "time/sync_s": phases.get("sync", 0.0),
        "tokens_per_s": (g[5] + g[6]) / max(step_s, 1e-9),
    }
    for k, v in sr.stats.items():
        row.setdefault(k, v)
    row.update(peak_memory_mb(info.device))
    return row


# ------------------------------------------------------------------ entry point


def _quiet_libraries() -> None:
    """No per-file progress bars from transformers / hub: our bar and `error:` lines only."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    _quiet_libraries()
    try:
        _, cfg = parse_args(argv)
        return run(cfg)
    except (ConfigError, DataSourceError, UserError) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
