"""The state of one training run and the phases around the RL loop.

`set_up` builds everything a run needs (process group, start-up checks, model, data,
rollout engine, optimizer) into one `Session`; `resume` or `start_fresh` bring it to its
first RL step; `evaluate`, `save` and `record` are the per-step chores; `finish` writes the
summary. `train.run` calls them in that order around `rl_step.rl_step`.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from rgpo_fast.algos.guidance import HintLevels
from rgpo_fast.data.multimodal import load_processor, refuse_images
from rgpo_fast.data.readers import FieldMap
from rgpo_fast.data.types import Example
from rgpo_fast.errors import UserError
from rgpo_fast.rewards.contract import probe
from rgpo_fast.rollout.base import SamplingParams
from rgpo_fast.trainer import checkpoint as ckpt
from rgpo_fast.trainer import run_dir
from rgpo_fast.trainer.build import build_engine, load_policy, resolve_model_dir
from rgpo_fast.trainer.collect import CollectContext
from rgpo_fast.trainer.config import ConfigError, RunConfig, load_yaml
from rgpo_fast.trainer.data_sources import (
    DataSourceError,
    PromptSampler,
    check_data_paths,
    checked_reward_for,
    eval_sources,
    load_source,
)
from rgpo_fast.trainer.distributed import (
    DistInfo,
    all_reduce_sum,
    broadcast_object,
    init_distributed,
    shard_model,
)
from rgpo_fast.trainer.evaluation import evaluate_all
from rgpo_fast.trainer.hf_export import save_hf
from rgpo_fast.trainer.metrics import MetricsLog, paired_gain, summary_table
from rgpo_fast.trainer.nonfinite import NonFiniteGuard, check_finite_weights
from rgpo_fast.trainer.plots import write_plots
from rgpo_fast.trainer.preflight import (
    check_engine,
    check_image_budget,
    check_loss_options,
    check_rationales,
    check_sequence_lengths,
)
from rgpo_fast.trainer.ref_policy import (
    build_ref_policy,
    copy_weights,
    load_ref_policy,
    save_ref_policy,
)
from rgpo_fast.trainer.run_dir import RunLock
from rgpo_fast.trainer.sinks import MetricsSink, open_sinks
from rgpo_fast.trainer.tiny_model import is_vision_language
from rgpo_fast.trainer.update import make_optimizer, make_scheduler
from rgpo_fast.trainer.warm_start import sft_guard, sft_warm_start
from rgpo_fast.trainer.weight_sync import sync_engine

# The eval set of eval.train_problems: the first training prompts, scored like held-out ones.
TRAIN_SET = "train"
# Step metrics summed over the run into summary.json's totals, under the same names.
SUMMED = ("guided/prompts", "guided/accepted", "guided/copies", "guided/transferred",
          "tokens/generated", "time/step_s", "reward/timeouts", "reward/zeroed")  # fmt: skip
TOTALS = (*SUMMED, "nonfinite/skipped")
# Names of the totals in checkpoints written before they took the metrics' names.
LEGACY_TOTALS = {"guided_prompts": "guided/prompts", "accepted": "guided/accepted",
                 "gen_tokens": "tokens/generated", "rl_time_s": "time/step_s"}  # fmt: skip


@dataclass
class Session:
    """Everything one run holds between phases."""

    cfg: RunConfig
    info: DistInfo
    out_dir: Path
    policy: torch.nn.Module
    tokenizer: Any
    model_dir: Path
    features: dict[str, Any]
    engine: Any
    shares_weights: bool  # the engine decodes with the trainer's own module (no sync)
    reward_fn: Any  # the training data's CheckedReward (rewards/contract.py)
    sft_set: list[Example]
    eval_sets: dict[str, list[Example]]
    eval_rewards: dict[str, Any]  # each eval set scored with its own dataset's reward
    data_report: dict[str, dict]  # per source: rows read, used, dropped by reason
    sampler: PromptSampler
    levels: HintLevels
    optimizer: torch.optim.Optimizer
    scheduler: Any
    metrics: MetricsLog
    collect: CollectContext
    t_start: float
    lock: RunLock | None = None  # rank 0 owns the run directory (trainer/run_dir.py)
    ref_policy: torch.nn.Module | None = None  # frozen, for algo.beta > 0 (ref_policy.py)
    sinks: list[MetricsSink] = field(default_factory=list)  # rank 0: tensorboard, wandb
    eval_before: dict[str, float] = field(default_factory=dict)
    # per held-out metric (<set>_accuracy, <set>_mean@k), each problem's value before RL:
    # the pairs of the final gain
    eval_before_items: dict[str, list[float]] = field(default_factory=dict)
    # Running sums of the step metrics of the same names (summary.json "totals").
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TOTALS, 0.0))
    rl_guard: NonFiniteGuard | None = None  # the check before every RL update

    @property
    def export_files(self):
        """What an export saves beside the weights: the processor of a vision-language
        model (tokenizer, image processor, chat template), else the tokenizer."""
        return self.collect.processor or self.tokenizer

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def log(self, *msg, **kw) -> None:
        if self.info.is_main:
            print(*msg, **kw, flush=True)

    def close(self) -> None:
        """Close the metrics sinks and give the run directory back (the lock; a process
        exit does it too)."""
        try:
            for sink in self.sinks:
                sink.close()
        finally:
            self.sinks = []
            if self.lock is not None:
                self.lock.release()

    def sync(self) -> None:
        """New weights into the rollout engine (the sleep/wake/load protocol)."""
        # The engine samples in the compute dtype: send that, not the fp32 masters.
        sync_engine(self.policy, self.engine, shares_weights=self.shares_weights,
                    bucket_mb=self.cfg.rollout.sync_bucket_mb,
                    dtype=self.policy.compute_dtype)  # fmt: skip


def set_up(cfg: RunConfig) -> Session:
    """Process group, start-up checks, model, data, rollout engine and optimizer. Rank 0
    owns the run directory from here on (released by `Session.close`, or on failure)."""
    t_start = time.perf_counter()
    info = init_distributed(cfg.train.device)
    lock, decision, failure = None, None, None
    if info.is_main:  # the run directory is this run's before anything is written into it
        try:
            out_dir = run_dir.choose(cfg.train.output_dir, cfg.train.resume,
                                     lambda d: ckpt.has_usable_checkpoint(d / "checkpoints"))
            lock = RunLock(run_dir.create(out_dir)).acquire()
            if not cfg.train.resume and run_dir.run_contents(out_dir):  # written meanwhile
                raise run_dir.RunDirError(f"{out_dir} was taken by another run; start again")
            _check_resume_options(cfg, out_dir)
            decision = ("dir", str(out_dir))
        except UserError as e:  # the directory, or options a resume may not change
            if lock is not None:
                lock.release()
            decision, failure = ("error", str(e)), e
    kind, value = broadcast_object(decision, info)  # every rank stops, or none
    if kind == "error":
        raise failure if failure is not None else UserError(value)
    out_dir = Path(value)
    if str(out_dir) != cfg.train.output_dir:
        if info.is_main:
            print(f"{cfg.train.output_dir} holds an earlier run: this run writes to {out_dir} "
                  f"(resume it with --output-dir {out_dir} --resume)", flush=True)
        cfg.train.output_dir = str(out_dir)
    try:
        return _build(cfg, info, out_dir, lock, t_start)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _build(cfg: RunConfig, info: DistInfo, out_dir: Path, lock: RunLock | None,
           t_start: float) -> Session:  # fmt: skip
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    # Fail fast, before minutes of model loading and before anything is on the GPU.
    check_data_paths(cfg)
    check_engine(cfg, info)
    check_loss_options(cfg)
    reward_fn = checked_reward_for(cfg, cfg.data.train)  # imports a custom reward
    eval_rewards = {name: checked_reward_for(cfg, spec)
                    for name, spec in eval_sources(cfg.data.eval)}  # fmt: skip
    if cfg.eval.train_problems and TRAIN_SET in eval_rewards:
        raise DataSourceError(f"eval.train_problems reports the training prompts as set "
                              f"{TRAIN_SET!r}, and data.eval already has a set of that name; "
                              "rename that file")
    model_dir = resolve_model_dir(cfg)
    max_model_len = check_sequence_lengths(cfg, model_dir)
    check_image_budget(cfg, model_dir)

    policy, lm, tok, model_dir, features = load_policy(cfg, info, model_dir)
    if info.is_main:
        print("start-up: " + ", ".join(f"{k}={v}" for k, v in features.items()), flush=True)
    processor = load_processor(model_dir) if is_vision_language(model_dir) else None
    train_set, sft_set, eval_sets, data_report = _load_data(cfg, tok, processor)
    if processor is None:
        refuse_images({cfg.data.train: train_set, cfg.data.sft: sft_set, **eval_sets}, model_dir)
    for entry in data_report.values():  # files: one line each, every dropped row counted
        line = entry.pop("line", None)
        if line and info.is_main:
            print(line, flush=True)
    # Each reward on a few reference rows: a reward that does not fit its data fails now.
    notices = [probe(reward_fn, train_set, cfg.data.train)]
    notices += [probe(eval_rewards[name], exs, name) for name, exs in eval_sets.items()]
    for notice in filter(None, notices):
        if info.is_main:
            print(notice, flush=True)
    if cfg.eval.train_problems:  # training prompts scored like held-out ones (probed above)
        eval_sets[TRAIN_SET] = train_set[: cfg.eval.train_problems]
        eval_rewards[TRAIN_SET] = reward_fn
    notice = check_rationales(cfg, train_set)
    if notice and info.is_main:
        print(notice, flush=True)
    if info.enabled:
        policy = shard_model(policy, info, compute_dtype=policy.compute_dtype)
    engine, shares = build_engine(cfg, lm, tok, model_dir, info, max_model_len)
    ref = build_ref_policy(cfg, info, model_dir) if cfg.algo.beta > 0 else None
    optimizer = make_optimizer(policy, cfg.optim.lr, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.train.max_steps, cfg.optim.warmup_steps,
                               cfg.optim.schedule)  # fmt: skip
    collect = CollectContext(
        engine=engine,
        tokenizer=tok,
        algo=cfg.algo,
        reward_fn=reward_fn,
        sampling=SamplingParams(n=cfg.rollout.n, max_new_tokens=cfg.rollout.max_new_tokens,
                                temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                top_k=cfg.rollout.top_k),
        system_prompt=cfg.data.system_prompt,
        keep_rollout_logprobs=engine.name == "vllm",
        max_prompt_len=cfg.data.max_prompt_tokens + cfg.rollout.max_hint_tokens,
        processor=processor,
    )
    if info.is_main:  # every check passed and everything loaded: now the run's record
        _save_config(cfg, out_dir)
    sinks = open_sinks(cfg.logging.report_to, out_dir, cfg.to_dict()) if info.is_main else []
    return Session(
        cfg=cfg, info=info, out_dir=out_dir, policy=policy, tokenizer=tok, model_dir=model_dir,
        features=features, engine=engine, shares_weights=shares, reward_fn=reward_fn,
        sft_set=sft_set, eval_sets=eval_sets, eval_rewards=eval_rewards, data_report=data_report,
        sampler=PromptSampler(train_set, cfg.train.seed),
        levels=HintLevels(cfg.algo.adaptive_levels),
        optimizer=optimizer, scheduler=scheduler, metrics=MetricsLog(out_dir / "metrics.jsonl"),
        collect=collect, t_start=t_start, lock=lock, ref_policy=ref, sinks=sinks,
        rl_guard=NonFiniteGuard("RL", f"Lower optim.lr (now {cfg.optim.lr:g}) or check the "
                                "reward and the data", max_skips=cfg.train.max_nonfinite_skips),
    )  # fmt: skip


def _saved_config(out_dir: Path) -> dict | None:
    path = out_dir / "config.yaml"
    return load_yaml(path) if path.is_file() else None


def _check_resume_options(cfg: RunConfig, out_dir: Path) -> None:
    """--resume keeps the run's defining options (run_dir.resume_conflicts)."""
    saved = _saved_config(out_dir) if cfg.train.resume else None
    if saved is None:
        return
    new = yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # as saved
    bad = run_dir.resume_conflicts(run_dir.config_changes(saved, new))
    if bad:
        raise ConfigError(f"--resume: options that define the run differ from "
                          f"{out_dir / 'config.yaml'}: {'; '.join(bad)}. Resume with the run's "
                          "options, or start a new run in another --output-dir")  # fmt: skip


def _save_config(cfg: RunConfig, out_dir: Path) -> None:
    """config.yaml (the options in force) and, on a resume that changed options, one line
    of config_history.jsonl with what changed (a fresh run's directory holds no run, so
    a config.yaml there is a failed start's and simply replaced)."""
    saved = _saved_config(out_dir) if cfg.train.resume else None
    new = yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    changes = run_dir.config_changes(saved, new) if saved is not None else {}
    changes.pop("train.resume", None)
    with run_dir.writing(f"{out_dir / 'config.yaml'}"):
        if changes:
            line = {"time": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "changed": {k: {"was": a, "now": b} for k, (a, b) in changes.items()}}
            with open(out_dir / "config_history.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        tmp = out_dir / ".config.yaml.tmp"  # renamed into place: never half a config
        cfg.save(tmp)
        tmp.replace(out_dir / "config.yaml")


def _load_data(cfg: RunConfig, tok, processor=None):
    """-> (train set, SFT set, eval sets, report): `report` holds each source's counts
    (rows read, used, dropped by reason) for the start-up log and summary.json."""
    d = cfg.data
    fields = FieldMap(problem=d.problem_field, rationale=d.rationale_field,
                      answer=d.answer_field, images=d.images_field)
    common = {"tokenizer": tok, "max_prompt_tokens": d.max_prompt_tokens,
              "system": d.system_prompt, "fields": fields, "processor": processor}
    report: dict[str, dict] = {}
    train_set = load_source(cfg.data.train, n=cfg.data.n_train, seed=cfg.train.seed,
                            heldout=False, report=report, role="train", **common)  # fmt: skip
    sft_set = []
    if cfg.data.sft and cfg.train.sft_steps:
        # The warm start's targets are the rationales: a row without one would teach the
        # model to stop at once.
        sft_set = load_source(cfg.data.sft, n=cfg.data.n_train, seed=cfg.train.seed + 1,
                              heldout=False, require_rationale=True, report=report,
                              role="sft", **common)  # fmt: skip
    eval_sets = {
        name: load_source(spec, n=cfg.data.n_eval, seed=cfg.data.eval_seed, heldout=True,
                          limit=cfg.data.n_eval, report=report, role=f"eval {name}",
                          **common)[: cfg.data.n_eval]
        for name, spec in eval_sources(cfg.data.eval)
    }  # fmt: skip
    return train_set, sft_set, eval_sets, report


def evaluate(s: Session, per_problem: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Held-out metrics of every eval set with the engine's current weights (`per_problem`
    receives each metric's per-problem values, evaluation.evaluate_all)."""
    cfg = s.cfg
    out = evaluate_all(s.engine, s.tokenizer, s.eval_sets, s.eval_rewards, seed=cfg.train.seed,
                       max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                       pass_k=cfg.eval.pass_k, temperature=cfg.eval.temperature, info=s.info,
                       system=cfg.data.system_prompt, threshold=cfg.algo.success_threshold,
                       mean_k=cfg.eval.mean_k, per_problem=per_problem,
                       processor=s.collect.processor)  # fmt: skip
    counts = reward_counts(list(s.eval_rewards.values()), s.info, prefix="reward/")
    for key, n in counts.items():
        s.totals[key] += n
    return out


def reward_counts(rewards, info: DistInfo, prefix: str = "") -> dict[str, int]:
    """Timeouts and zeroed samples of `rewards` (CheckedReward, rewards/contract.py) since
    the last call, summed over ranks (every rank scores its own samples)."""
    local = [r.pop_counts() for r in rewards]
    t = torch.tensor([sum(c["timeouts"] for c in local), sum(c["zeroed"] for c in local)],
                     dtype=torch.float64)  # fmt: skip
    timeouts, zeroed = all_reduce_sum(t, info).tolist()
    return {f"{prefix}timeouts": int(timeouts), f"{prefix}zeroed": int(zeroed)}


def trainer_state(s: Session, step: int) -> dict:
    return {"data": s.sampler.state_dict(), "hint_levels": s.levels.state_dict(),
            "eval_before": s.eval_before, "eval_before_items": s.eval_before_items,
            "totals": dict(s.totals), "step_done": step}  # fmt: skip


def save(s: Session, step: int) -> None:
    check_finite_weights(s.policy, s.info, f"before checkpoint {step}")
    ckpt.save_checkpoint(s.ckpt_dir, step, s.policy, s.optimizer, s.scheduler,
                         trainer_state(s, step), s.info, keep=s.cfg.train.keep_checkpoints)


def resume(s: Session) -> int | None:
    """Restore the newest usable checkpoint; -> its step, or None when there is none."""
    state = ckpt.load_latest(s.ckpt_dir, s.policy, s.optimizer, s.scheduler, s.info)
    if state is None:
        s.log("warning: --resume given but no usable checkpoint found; starting fresh",
              file=sys.stderr)  # fmt: skip
        return None
    step = int(state["step"])
    s.sampler.load_state_dict(state["data"])
    s.levels.load_state_dict(state["hint_levels"])
    s.eval_before = state["eval_before"]
    s.eval_before_items = state.get("eval_before_items", {})  # older checkpoints: none
    # A checkpoint of an older version lacks newer keys, and its older names are renamed.
    s.totals.update({LEGACY_TOTALS.get(k, k): v for k, v in state["totals"].items()})
    s.rl_guard.skipped = int(s.totals["nonfinite/skipped"])  # the allowance is the run's
    if s.ref_policy is not None:
        load_ref_policy(s.ref_policy, s.ckpt_dir)
    if s.info.is_main:
        with run_dir.writing(f"{s.metrics.path} (rows after step {step} are dropped)"):
            s.metrics.truncate_after(step)
    s.engine.sleep(level=2)  # the engine holds the initial weights: replace them
    s.sync()
    return step


def start_fresh(s: Session) -> int:
    """SFT warm start, the baseline evaluation, and checkpoint 0 (never redone on resume)."""
    if s.sft_set:
        t0 = time.perf_counter()
        guard = sft_guard(s.cfg)
        loss = sft_warm_start(s.policy, s.sft_set, s.tokenizer, s.cfg, s.info, guard=guard,
                              processor=s.collect.processor)
        skipped = f", {guard.skipped} non-finite steps skipped" if guard.skipped else ""
        s.log(f"SFT warm-start: {s.cfg.train.sft_steps} steps on {s.cfg.data.sft}, "
              f"final loss {loss:.3f}{skipped}, {time.perf_counter() - t0:.0f}s")  # fmt: skip
        s.totals["nonfinite/skipped"] = s.rl_guard.skipped = guard.skipped
        check_finite_weights(s.policy, s.info, "after the SFT warm start")
    if s.ref_policy is not None:  # the KL term's reference: the policy as RL starts
        copy_weights(s.ref_policy, s.policy)
        save_ref_policy(s.ref_policy, s.ckpt_dir, s.info)
    s.engine.sleep(level=2)
    s.sync()
    s.eval_before = evaluate(s, s.eval_before_items)
    s.log("eval before RL: " + json.dumps({k: round(v, 3) for k, v in s.eval_before.items()}))
    save(s, 0)
    return 0


def record(s: Session, row: dict) -> None:
    """Add a step's row to the totals and to metrics.jsonl (every `log_every` steps)."""
    for key in SUMMED:
        s.totals[key] += row[key]
    s.totals["nonfinite/skipped"] = s.rl_guard.skipped  # the SFT warm start's count too
    step, cfg = row["step"], s.cfg
    if s.info.is_main and (step % cfg.logging.log_every == 0 or step == cfg.train.max_steps):
        with run_dir.writing(f"step {step} to {s.metrics.path}"):
            s.metrics.write(row)
            for sink in s.sinks:  # the same row, the same keys
                sink.write(row)


def finish(s: Session) -> dict:
    """Final evaluation, the policy as a HF model directory (`final/`), summary.json, plots
    and the printed table; -> the summary."""
    after_items: dict[str, list[float]] = {}
    eval_after = evaluate(s, after_items)
    # The gain on the same problems, with the paired standard error of its differences.
    gains = {}
    for key, before in s.eval_before_items.items():
        if len(after_items.get(key, ())) == len(before):
            gain, se = paired_gain(before, after_items[key])
            gains[key] = {"gain": gain, "paired_se": se, "n": len(before)}
    step = s.cfg.train.max_steps
    final = save_hf(s.policy, s.export_files, s.out_dir / "final", s.info, on_failure=(
        f". Training itself finished: checkpoints/step_{step:06d} is complete and intact; "
        "free some space and run the same command with --resume to write final/, "
        "summary.json and the plots from it (no step is trained again)"))
    s.totals["tokens_per_s"] = s.totals["tokens/generated"] / max(s.totals["time/step_s"], 1e-9)
    summary = {
        "algo": s.cfg.algo.name,
        "steps": s.cfg.train.max_steps,
        "eval": eval_after,
        "eval_before": s.eval_before,
        "eval_sizes": {name: len(exs) for name, exs in s.eval_sets.items()},
        "eval_gain": gains,
        # per-problem outcomes in set order, so runs on the same problems pair up
        # (another algorithm or seed: metrics.paired_gain on these lists)
        "eval_items": {"before": s.eval_before_items, "after": after_items},
        "data": s.data_report,
        "totals": s.totals,
        "time_s": time.perf_counter() - s.t_start,
        "world_size": s.info.world_size,
        "model": s.cfg.model.path or str(s.model_dir),
        "features": s.features,
        "final_model": str(final) if final is not None else None,
    }
    if s.info.is_main:
        with run_dir.writing(f"{s.out_dir / 'summary.json'}"):
            (s.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            for sink in s.sinks:
                sink.summary(summary)
        if s.cfg.logging.plots:
            with run_dir.writing(f"the plots in {s.out_dir / 'plots'}"):
                write_plots(s.metrics.read(), s.out_dir / "plots", held_out=(
                    s.eval_before, eval_after, s.cfg.train.max_steps))
        print(summary_table(summary), flush=True)
        print(f"outputs in {s.out_dir}/ (metrics.jsonl, summary.json, checkpoints/, plots/, "
              "final/: the model for from_pretrained and vLLM)")
    return summary
