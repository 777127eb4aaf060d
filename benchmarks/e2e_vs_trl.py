"""End to end: TRL's GRPOTrainer vs `python -m rgpo_fast.train`, same work, CPU.

    python benchmarks/e2e_vs_trl.py                       # speed: defaults below, ~2-4 min
    python benchmarks/e2e_vs_trl.py --steps 8 --prompts 8 --group 8 --max-new-tokens 32
    python benchmarks/e2e_vs_trl.py --learning            # learning: held-out accuracy

Learning mode (`--learning`): both trainers run GRPO from the learning benchmark's SFT warm
start (benchmarks/learning_warm_start.py, cached), on its training task, with its RL
settings (prompts per step, G, learning rate and schedule, steps, response length); each
final policy is evaluated with the same function (rgpo_fast.trainer.evaluation, greedy, on
the held-out problems the rgpo_fast run of that seed draws), and the table puts held-out
accuracy before and after side by side, per seed, with one standard error; a row per run
goes to benchmarks/results/e2e_vs_trl_learning.csv. It answers: does rgpo_fast's GRPO
learn as TRL's does?

Both trainers run GRPO (no KL, one update per rollout, no SFT warm-start, no evaluation) on
the same locally built tiny Qwen2 model (loaded with from_pretrained), the built-in
`arith:mixed` task with the exact-match reward, the same number of prompts per step, group
size, completion length, learning rate, fp32, and the same CPU thread count. Each trainer
runs in its own fresh process (`--worker trl|rgpo`), so its peak RSS is its own.

Reported per trainer: median step time over the steps after `--warmup`, the generation
share (TRL: `_generate_and_score_completions`, i.e. sampling + rewards + advantages;
rgpo_fast: its `generate` phase, the same work), mean completion length (a random-init
model rarely stops early, so both decode about max_new_tokens tokens per sample: equal
work), peak RSS of the process, and the RSS growth during training (peak minus the RSS at
the first rollout, when model, data and trainer are set up: rollouts, activations,
gradients, optimizer state). Ratios are
rgpo_fast / TRL. A row per trainer goes to benchmarks/results/e2e_vs_trl.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_csv, git_sha, machine, peak_rss_bytes, run_worker  # noqa: E402


def _rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


# ----------------------------------------------------------------------------- workers


def worker_trl(a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    import warnings

    warnings.simplefilter("ignore")
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rgpo_fast.data.arith import make_arith
    from rgpo_fast.rewards import exact_reward
    from rgpo_fast.trainer.tiny_model import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(a.model)
    ex = make_arith(a.seed, a.n_train, "mixed")
    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": e.problem}] for e in ex],
                            "answer": [e.answer for e in ex]})  # fmt: skip

    def reward(completions, answer, **kw):
        return [exact_reward(c[0]["content"], ans) for c, ans in zip(completions, answer)]

    args = GRPOConfig(
        output_dir=a.out, per_device_train_batch_size=a.prompts * a.group,
        num_generations=a.group, max_completion_length=a.max_new_tokens, max_steps=a.steps,
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, beta=0.0,
        loss_type="dapo", temperature=1.0, top_p=1.0, bf16=False, use_cpu=True,
        logging_steps=1, report_to="none", save_strategy="no", seed=a.seed,
        dataloader_num_workers=0, disable_tqdm=True, max_grad_norm=1.0,
        adam_beta2=0.99,
    )  # fmt: skip
    step_times: list[float] = []
    gen_times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_times.append(time.perf_counter() - self.t0)

    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds,
                          processing_class=tok, callbacks=[StepTimer()])  # fmt: skip
    inner = trainer._generate_and_score_completions
    rss_first: list[int] = []

    def timed(inputs):
        if not rss_first:
            rss_first.append(_rss_now())
        t0 = time.perf_counter()
        out = inner(inputs)
        gen_times.append(time.perf_counter() - t0)
        return out

    trainer._generate_and_score_completions = timed
    trainer.train()
    lens = [h["completions/mean_length"] for h in trainer.state.log_history
            if "completions/mean_length" in h]  # fmt: skip
    return _summary("trl", a, step_times, gen_times, lens, rss_first[0])


def worker_rgpo(a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from rgpo_fast.trainer import session
    from rgpo_fast.trainer.cli import parse_args
    from rgpo_fast.trainer.progress import quiet_libraries
    from rgpo_fast.trainer.rl_step import rl_step

    argv = [
        "--model", a.model, "--algo", "grpo", "--output-dir", a.out, "--max-steps", str(a.steps),
        "--data", "arith:mixed", "--data.sft", "", "--data.eval", "", "--train.sft_steps", "0",
        "--data.n_train", str(a.n_train), "--train.prompts_per_step", str(a.prompts),
        "--rollout.n", str(a.group), "--rollout.max_new_tokens", str(a.max_new_tokens),
        "--train.micro_batch_size", str(a.prompts * a.group), "--optim.lr", str(a.lr),
        "--train.threads", str(a.threads), "--train.seed", str(a.seed),
        "--train.save_every", "0", "--logging.progress", "false", "--logging.plots", "false",
        "--algo.loss_agg", "token-mean", "--algo.beta", "0",
    ]  # fmt: skip
    # The phases of train.run, so that RSS is read where the TRL worker reads it: after
    # set-up, right before the first rollout.
    quiet_libraries()
    _, cfg = parse_args(argv)
    s = session.set_up(cfg)
    session.start_fresh(s)
    rss_first = _rss_now()
    for step in range(1, cfg.train.max_steps + 1):
        session.record(s, rl_step(s, step))
    rows = [json.loads(x) for x in open(Path(a.out) / "metrics.jsonl")]
    steps = [r["time/step_s"] for r in rows]
    gens = [r["time/generate_s"] for r in rows]
    lens = [r["tokens/generated"] / max(r["batch/sequences"], 1) for r in rows]
    return _summary("rgpo_fast", a, steps, gens, lens, rss_first)


def _summary(name, a, steps, gens, lens, rss_setup) -> dict:
    s, g = steps[a.warmup:] or steps, gens[a.warmup:] or gens
    peak = peak_rss_bytes()
    return {
        "trainer": name, "steps": len(steps), "step_s_median": statistics.median(s),
        "step_s_mean": statistics.fmean(s), "gen_s_median": statistics.median(g),
        "gen_share": statistics.fmean(g) / statistics.fmean(s),
        "completion_len_mean": statistics.fmean(lens), "peak_rss_mb": peak / 2**20,
        "rss_growth_mb": max(peak - rss_setup, 0) / 2**20,
        "all_step_s": [round(x, 3) for x in steps],
    }  # fmt: skip


# ----------------------------------------------------------------------------- learning


def _learning_settings():
    from learning_settings import FULL

    return FULL


def _held_out(s, tok, seed: int):
    """The held-out sets `python -m rgpo_fast.train --seed seed` evaluates on."""
    from rgpo_fast.trainer.data_sources import eval_sources, load_source

    return {name: load_source(spec, n=s.n_eval, seed=seed, heldout=True, tokenizer=tok)[: s.n_eval]
            for name, spec in eval_sources(s.eval_data)}  # fmt: skip


def _evaluate(model, tok, s, seed: int) -> dict:
    """Greedy held-out accuracy with rgpo_fast's evaluation, on the problems the rgpo_fast
    run of the same seed evaluates (so both trainers are scored on the same problems)."""
    from rgpo_fast.data.tasks import task_of
    from rgpo_fast.rewards import get_reward_fn
    from rgpo_fast.rollout.hf import HFEngine
    from rgpo_fast.trainer.distributed import DistInfo
    from rgpo_fast.trainer.evaluation import evaluate_all

    engine = HFEngine(model, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    reward = get_reward_fn(task_of(s.train_data).reward)
    return evaluate_all(engine, tok, _held_out(s, tok, seed), reward,
                        max_new_tokens=s.max_new_tokens, pass_k=0, temperature=1.0, seed=0,
                        info=DistInfo())  # fmt: skip


def worker_trl_learn(a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    import warnings

    warnings.simplefilter("ignore")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rgpo_fast.data.tasks import task_of
    from rgpo_fast.rewards import get_reward_fn
    from rgpo_fast.trainer.data_sources import load_source
    from rgpo_fast.trainer.tiny_model import load_model_and_tokenizer

    s = _learning_settings()
    model, tok = load_model_and_tokenizer(a.model)
    ex = load_source(s.train_data, n=s.n_train, seed=a.seed, heldout=False)
    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": e.problem}] for e in ex],
                            "answer": [e.answer for e in ex]})  # fmt: skip
    verify = get_reward_fn(task_of(s.train_data).reward)

    def reward(completions, answer, **kw):
        return [verify(c[0]["content"], ans) for c, ans in zip(completions, answer)]

    args = GRPOConfig(
        output_dir=a.out, per_device_train_batch_size=s.prompts_per_step * s.group_size,
        num_generations=s.group_size, max_completion_length=s.max_new_tokens,
        max_steps=s.steps, learning_rate=s.lr, lr_scheduler_type=s.schedule, warmup_steps=0,
        beta=0.0, loss_type="dapo", temperature=1.0, top_p=1.0, bf16=False, use_cpu=True,
        logging_steps=10, report_to="none", save_strategy="no", seed=a.seed,
        dataloader_num_workers=0, disable_tqdm=True, max_grad_norm=1.0, adam_beta2=0.99,
    )  # fmt: skip
    t0 = time.perf_counter()
    GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds,
                processing_class=tok).train()  # fmt: skip
    wall = time.perf_counter() - t0
    return {"trainer": "trl", "eval": _evaluate(model.eval(), tok, s, a.seed), "train_s": wall}


def worker_rgpo_learn(a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from rgpo_fast.train import main as train_main

    t0 = time.perf_counter()
    if train_main(rgpo_learn_argv(_learning_settings(), a.model, a.out, a.seed, a.threads)):
        raise SystemExit("rgpo_fast.train failed")
    summary = json.loads((Path(a.out) / "summary.json").read_text())
    return {"trainer": "rgpo_fast", "eval": summary["eval"],
            "eval_before": summary["eval_before"], "train_s": time.perf_counter() - t0}


def rgpo_learn_argv(s, model: str, out: str, seed: int, threads: int) -> list[str]:
    """`python -m rgpo_fast.train` arguments of the learning benchmark's own GRPO run with the
    settings `s` (the TRL worker's GRPOConfig mirrors them)."""
    from learning_settings import Variant, train_args

    return train_args(Variant("grpo", "grpo"), seed, s, Path(model), Path(out), threads)


def learning_main(a) -> None:
    from learning_settings import RUNS
    from learning_warm_start import warm_start

    from rgpo_fast.trainer.metrics import standard_error

    s = _learning_settings()
    warm_start(s, RUNS)
    model = str(RUNS / f"warmstart-{s.warm_key()}")
    seeds = [int(x) for x in a.seeds.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="e2e_learn_") as tmp:
        for seed in seeds:
            for side in ("trl", "rgpo"):
                args = ["--worker", f"{side}-learn", "--model", model, "--threads",
                        str(a.threads), "--seed", str(seed), "--out",
                        str(Path(tmp) / f"{side}{seed}")]  # fmt: skip
                res = run_worker(__file__, args)
                if "error" in res:
                    raise SystemExit(f"{side} worker failed: {res['error']}")
                res["seed"] = seed
                results.append(res)
                print(f"  seed {seed} {side:<4}: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in res["eval"].items()) +
                    f" ({res['train_s']:.0f}s)", flush=True)  # fmt: skip
    # Each seed evaluates on its own held-out draw (as `--seed` does in the trainer), so the
    # warm start is scored per seed, by the rgpo_fast run (its evaluation before RL).
    before = {r["seed"]: r["eval_before"] for r in results if "eval_before" in r}
    after = {(r["seed"], r["trainer"]): r["eval"] for r in results}
    n = s.n_eval

    def cell(v: float) -> str:
        return f"{v:.3f} ± {standard_error(v, n):.3f}"

    print(f"\nGRPO from one warm start, {s.train_data}, {s.steps} steps x {s.prompts_per_step} "
          f"prompts x G={s.group_size}, lr {s.lr} {s.schedule}; held-out greedy accuracy "
          f"({n} problems per set, ± one standard error), {machine()}")
    print(f"{'seed':<5} {'set':<15} {'warm start':>14} {'TRL':>14} {'rgpo_fast':>14}")
    for seed in seeds:
        for key in sorted(before[seed]):
            print(f"{seed:<5} {key:<15} {cell(before[seed][key]):>14} "
                  f"{cell(after[seed, 'trl'][key]):>14} {cell(after[seed, 'rgpo_fast'][key]):>14}")
    for key in sorted(before[seeds[0]]):
        gain = {t: statistics.mean(after[sd, t][key] - before[sd][key] for sd in seeds)
                for t in ("trl", "rgpo_fast")}  # fmt: skip
        print(f"mean gain over the warm start, {key}: TRL {100 * gain['trl']:+.1f} points, "
              f"rgpo_fast {100 * gain['rgpo_fast']:+.1f} points")
    rows = [{"mode": "learning", "trainer": r["trainer"], "seed": r["seed"],
             **{f"before_{k}": v for k, v in before[r["seed"]].items()},
             **{f"after_{k}": v for k, v in r["eval"].items()},
             "train_s": round(r["train_s"], 1), "steps": s.steps, "machine": machine(),
             "git": git_sha(), "time": time.strftime("%Y-%m-%d %H:%M:%S")} for r in results]
    print(f"CSV: {append_csv('e2e_vs_trl_learning.csv', rows)}")


# ----------------------------------------------------------------------------- driver


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--worker", choices=["trl", "rgpo", "trl-learn", "rgpo-learn"])
    p.add_argument("--learning", action="store_true",
                   help="learning mode: held-out accuracy after GRPO in both (docstring)")
    p.add_argument("--seeds", default="0", help="learning mode: comma-separated seeds")
    p.add_argument("--model", default=None, help="model dir (default: build the tiny model)")
    p.add_argument("--out", default=None)
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="G, samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1, help="first steps left out of the median")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vocab", type=int, default=None,
                   help="pad the model's vocabulary to V rows (LLM-like V >> H; see docstring)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["trl", "rgpo"], default=None, help="run one side only")
    p.add_argument("--repeats", type=int, default=3,
                   help="alternating runs per trainer; the run with the median step time is "
                        "reported (the machine is shared: single runs are noisy)")
    a = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if a.worker:
        workers = {"trl": worker_trl, "rgpo": worker_rgpo, "trl-learn": worker_trl_learn,
                   "rgpo-learn": worker_rgpo_learn}  # fmt: skip
        print(json.dumps(workers[a.worker](a)))
        return
    if a.learning:
        learning_main(a)
        return

    from rgpo_fast.trainer.tiny_model import TinyModelSpec, ensure_tiny_model

    if a.model is None:
        spec = TinyModelSpec(num_hidden_layers=a.layers, hidden_size=a.hidden,
                             intermediate_size=2 * a.hidden, seed=a.seed)  # fmt: skip
        a.model = str(ensure_tiny_model(spec))
    tmp_model = None
    if a.vocab:
        tmp_model = tempfile.TemporaryDirectory(prefix="e2e_vocab_")
        a.model = _padded_vocab_model(a.model, a.vocab, a.seed, tmp_model.name)
    common = ["--model", a.model, "--prompts", str(a.prompts), "--group", str(a.group),
              "--max-new-tokens", str(a.max_new_tokens), "--steps", str(a.steps),
              "--warmup", str(a.warmup), "--threads", str(a.threads), "--lr", str(a.lr),
              "--n-train", str(a.n_train), "--seed", str(a.seed)]  # fmt: skip
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="e2e_vs_trl_") as tmp:
        for rep in range(a.repeats):
            for side in ("trl", "rgpo"):
                if a.only and a.only != side:
                    continue
                out = str(Path(tmp) / f"{side}{rep}")
                res = run_worker(__file__, ["--worker", side, "--out", out, *common])
                if "error" in res:
                    raise SystemExit(f"{side} worker failed: {res['error']}")
                runs.setdefault(side, []).append(res)
                print(f"  run {rep} {side:<4} step s {res['step_s_median']:.3f} "
                      f"(steps: {res['all_step_s']})", flush=True)
    results = {side: sorted(rs, key=lambda r: r["step_s_median"])[len(rs) // 2]
               for side, rs in runs.items()}  # fmt: skip
    best = {side: min(r["step_s_median"] for r in rs) for side, rs in runs.items()}
    _report(a, results, best)


def _padded_vocab_model(base: str, vocab: int, seed: int, out: str) -> str:
    """The same tiny architecture with `vocab` rows in its (tied) embedding / lm_head.

    Real checkpoints pad their vocabulary too (Qwen2.5: 151936 rows for 151665 tokens);
    here the padding makes V >> H as in real LLMs, so the LM head's share of the work is
    realistic. The model is random-initialised (as in the default run of this benchmark):
    it samples padded ids, which decode to nothing, so rewards are 0 for both trainers and
    both decode max_new_tokens tokens per sample - the same work on each side.
    """
    import torch
    from transformers import Qwen2ForCausalLM

    from rgpo_fast.trainer.tiny_model import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(base)
    if vocab < len(tok):
        raise SystemExit(f"--vocab {vocab} is smaller than the tokenizer ({len(tok)} tokens)")
    cfg = model.config
    cfg.vocab_size = vocab
    torch.manual_seed(seed)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _report(a, results: dict, best: dict) -> None:
    print(f"\nmedian run of {a.repeats} per trainer (best_step_time_ratio: fastest runs). "
          f"GRPO, tiny Qwen2 ({a.layers} layers, hidden {a.hidden}, vocab "
          f"{a.vocab or 'char'}), arith:mixed, "
          f"{a.prompts} prompts x G={a.group}, max {a.max_new_tokens} new tokens, "
          f"{a.steps} steps (median after {a.warmup}), {a.threads} thread(s), "
          f"{machine()}")  # fmt: skip
    hdr = f"{'trainer':<10} {'step s':>8} {'gen s':>8} {'gen %':>6} {'len':>6} " \
          f"{'peak RSS MB':>12} {'RSS growth MB':>14}"  # fmt: skip
    print(hdr)
    for r in results.values():
        print(f"{r['trainer']:<10} {r['step_s_median']:>8.3f} {r['gen_s_median']:>8.3f} "
              f"{100 * r['gen_share']:>5.0f}% {r['completion_len_mean']:>6.1f} "
              f"{r['peak_rss_mb']:>12.0f} {r['rss_growth_mb']:>14.0f}")  # fmt: skip
    ratios = {}
    if len(results) == 2:
        t, o = results["trl"], results["rgpo"]
        ratios = {"step_time_ratio": o["step_s_median"] / t["step_s_median"],
                  "gen_time_ratio": o["gen_s_median"] / t["gen_s_median"],
                  "update_time_ratio": (o["step_s_median"] - o["gen_s_median"])
                  / max(t["step_s_median"] - t["gen_s_median"], 1e-9),
                  "peak_rss_ratio": o["peak_rss_mb"] / t["peak_rss_mb"],
                  "rss_growth_ratio": o["rss_growth_mb"] / max(t["rss_growth_mb"], 1e-9),
                  "best_step_time_ratio": best["rgpo"] / best["trl"]}  # fmt: skip
        print("rgpo_fast / TRL: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    import torch
    import trl

    rows = []
    for r in results.values():
        rows.append({"trainer": r["trainer"], "prompts": a.prompts, "group": a.group,
                     "max_new_tokens": a.max_new_tokens, "steps": a.steps, "threads": a.threads,
                     "layers": a.layers, "hidden": a.hidden, "vocab": a.vocab or 0,
                     "repeats": a.repeats,
                     "step_s_median": round(r["step_s_median"], 4),
                     "gen_s_median": round(r["gen_s_median"], 4),
                     "completion_len_mean": round(r["completion_len_mean"], 2),
                     "peak_rss_mb": round(r["peak_rss_mb"], 1),
                     "rss_growth_mb": round(r["rss_growth_mb"], 1),
                     **{k: round(v, 3) for k, v in ratios.items()},
                     "torch": torch.__version__, "trl": trl.__version__, "machine": machine(),
                     "git": git_sha(), "time": time.strftime("%Y-%m-%d %H:%M:%S")})  # fmt: skip
    if len(results) == 2:
        print(f"CSV: {append_csv('e2e_vs_trl.csv', rows)}")


if __name__ == "__main__":
    main()
