"""Learning benchmark: RGPO against GRPO on `countdown`, with the ablations that explain it.

    python benchmarks/learning.py            # core: GRPO, RGPO, 3 ablations x 3 seeds
    python benchmarks/learning.py --quick    # smaller version (a few minutes)
    python benchmarks/learning.py --all      # + DAPO, GHPO, LUFFY and three more ablations
    python benchmarks/learning.py --report   # rebuild table + figure from finished runs

What is compared, and how it is kept fair:
- one SFT warm-start (tiny Qwen2, solutions of `countdown:warm`), done ONCE and cached as an HF
  directory; every algorithm and seed starts RL from that directory (`--model DIR`, no SFT);
  its hint probe (benchmarks/learning_probe.py) says what each hint level opens;
- the same training prompts (`countdown:mixed`, generated from the seed), the same
  prompts per step, group size, learning rate, steps for everyone, and the same held-out
  problems for every run (data.eval_seed), so runs pair problem by problem;
- held-out mean@8 (average success of 8 samples per problem) beside greedy accuracy, on
  easy, hard and training problems, every `eval_every` steps through the trainer's own
  evaluation; differences to GRPO come with their paired standard error (per-problem
  differences, averaged over seeds) and per seed; every seed reported (no selection);
- the budget is counted twice: RL steps (equal for all) and generated tokens (guided
  rollouts included; `tokens/generated` of metrics.jsonl).

Each training run is a subprocess `python -m rgpo_fast.train ...` (at most `--jobs` at once,
one thread each); finished runs are reused when their arguments are unchanged, so an
interrupted benchmark continues where it stopped. Outputs: benchmarks/results/learning.md
(table) and benchmarks/results/learning.png (curves); run directories under
runs/bench_learning/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from learning_curves import (  # noqa: E402,F401 (re-exported for tests and --report)
    Aggregate,
    Curve,
    Row,
    aggregate,
    curve_from_rows,
    first_reach,
    mean_std,
    paired_difference,
    read_curve,
    summarize,
    value_at_budget,
)
from learning_probe import hint_probe, hint_probe_worker  # noqa: E402
from learning_report import (  # noqa: E402,F401
    machine_meta,
    markdown_table,
    plot,
    probe_table,
    target_checks,
    wall_time_text,
    write_markdown,
)
from learning_settings import (  # noqa: E402,F401
    BASELINE,
    FULL,
    MAIN,
    QUICK,
    RESULTS,
    ROOT,
    RUNS,
    Settings,
    Variant,
    sft_coef_variants,
    slug,
    train_args,
    variants,
)
from learning_warm_start import warm_start, warm_start_worker  # noqa: E402

# ----------------------------------------------------------------------------- runs




@dataclass
class Job:
    variant: Variant
    seed: int
    out: Path
    args: list[str]
    proc: subprocess.Popen | None = None
    t0: float = 0.0

    def done(self) -> bool:
        f = self.out / "bench_args.json"
        return ((self.out / "summary.json").exists() and f.exists()
                and json.loads(f.read_text()) == self.args)

    def progress(self) -> int:
        m = self.out / "metrics.jsonl"
        return len(m.read_text().splitlines()) if m.exists() else 0


def run_jobs(jobs: list[Job], n_parallel: int, total_steps: int) -> int:
    """Run the jobs not already done, `n_parallel` at once; returns how many were reused."""
    todo = [j for j in jobs if not j.done()]
    reused = len(jobs) - len(todo)
    print(f"runs: {len(jobs)} ({len(jobs) - len(todo)} reused), {n_parallel} in parallel",
          flush=True)
    running: list[Job] = []
    t_start, last_status, finished, durations = time.time(), time.time(), 0, []
    while todo or running:
        while todo and len(running) < n_parallel:
            j = todo.pop(0)
            shutil.rmtree(j.out, ignore_errors=True)
            j.out.mkdir(parents=True)
            j.t0 = time.time()
            log = open(j.out / "train.log", "w")
            j.proc = subprocess.Popen([sys.executable, "-m", "rgpo_fast.train", *j.args],
                                      stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"})
            running.append(j)
        time.sleep(1.0)
        for j in list(running):
            rc = j.proc.poll()
            if rc is None:
                continue
            running.remove(j)
            if rc != 0:
                tail = (j.out / "train.log").read_text().splitlines()[-5:]
                raise RuntimeError(f"{j.variant.name} seed {j.seed} failed (exit {rc}):\n"
                                   + "\n".join(tail))
            (j.out / "bench_args.json").write_text(json.dumps(j.args))
            finished += 1
            durations.append(time.time() - j.t0)
            hard = json.loads((j.out / "summary.json").read_text())["eval"].get("hard_accuracy")
            left = len(todo) + len(running)
            eta = sum(durations) / len(durations) * left / n_parallel
            print(f"[{finished}/{finished + left}] {j.variant.name} seed {j.seed}: "
                  f"hard {100 * hard:.1f} %, {durations[-1]:.0f}s "
                  f"(elapsed {(time.time() - t_start) / 60:.1f} min, ~{eta / 60:.1f} min left)",
                  flush=True)
        if running and time.time() - last_status > 30:
            last_status = time.time()
            print("  running: " + ", ".join(f"{j.variant.name} s{j.seed} step {j.progress()}/"
                                           f"{total_steps}" for j in running), flush=True)
    return reused


# ----------------------------------------------------------------------------- main


def paired_to_baseline(by_seed: dict[str, dict[int, Curve]], metric: str) -> dict[str, dict]:
    """Each variant's final held-out `metric` minus the baseline's, problem by problem:
    over the seeds ("hard", "easy": (difference, paired s.e., problems); greedy accuracy
    as "hard_greedy", "easy_greedy") and per seed."""
    base = by_seed.get(BASELINE, {})
    out = {}
    for name, runs in by_seed.items():
        if name == BASELINE:
            continue
        out[name] = {split: paired_difference(runs, base, f"{split}_{metric}")
                     for split in ("hard", "easy")}  # fmt: skip
        out[name].update({f"{split}_greedy": paired_difference(runs, base, f"{split}_accuracy")
                          for split in ("hard", "easy")})  # fmt: skip
        out[name]["seeds"] = {seed: {"hard": paired_difference({seed: c}, base,
                                                                f"hard_{metric}")}
                              for seed, c in sorted(runs.items())}  # fmt: skip
    return out


def report(jobs: list[Job], s: Settings, vs: list[Variant], md: Path, png: Path,
           command: str, wall: dict) -> str:
    by_seed: dict[str, dict[int, Curve]] = {}
    for j in jobs:
        if j.done():
            by_seed.setdefault(j.variant.name, {})[j.seed] = read_curve(j.out, s.metric)
    aggs = {v.name: aggregate(list(by_seed[v.name].values())) for v in vs if v.name in by_seed}
    if BASELINE not in aggs:
        raise RuntimeError(f"no finished {BASELINE} runs to compare against")
    rows, target, _ = summarize(aggs, vs)
    meta = machine_meta()
    if wall.get("git"):
        meta["git"] = f"{wall['git']} (code of the runs)"
    if wall.get("date"):
        meta["date"] = f"{wall['date']} (end of the runs)"
    if wall.get("wall_s") is not None:
        meta["benchmark wall time"] = wall_time_text(wall)
    probe_file = RUNS / f"warmstart-{s.warm_key()}" / "hint_probe.json"
    probe = json.loads(probe_file.read_text()) if probe_file.exists() else None
    paired = paired_to_baseline(by_seed, s.metric)
    text = write_markdown(md, rows, target, s, command, meta, paired, probe)
    plot(aggs, vs, png, f"countdown: RL on {s.train_data} from one SFT warm start, "
                        f"{len(s.seeds)} seeds", s.metric)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller version (a few minutes)")
    p.add_argument("--jobs", type=int, default=2, help="training processes at once")
    p.add_argument("--seeds", type=str, help="comma-separated RL seeds (override)")
    p.add_argument("--steps", type=int, help="RL steps (override)")
    p.add_argument("--only", type=str,
                   help="comma-separated variant names to run (any of them, core or not)")
    p.add_argument("--all", action="store_true",
                   help="every variant: the core comparison plus DAPO, GHPO, LUFFY and the "
                        "other ablations")
    p.add_argument("--sft-coefs", type=str,
                   help="instead of the comparison: RGPO at these comma-separated sft_coef "
                        "values beside GRPO (-> results/learning_sft_coef.{md,png})")
    p.add_argument("--report", action="store_true", help="only rebuild table and figure")
    p.add_argument("--out", type=str, help="results file stem (default learning[_quick])")
    p.add_argument("--warm-start-worker", type=str, help=argparse.SUPPRESS)
    p.add_argument("--probe-worker", type=str, help=argparse.SUPPRESS)
    p.add_argument("--settings-json", type=str, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.warm_start_worker or a.probe_worker:
        d = json.loads(a.settings_json)
        d["seeds"] = tuple(d["seeds"])
        if a.warm_start_worker:
            warm_start_worker(Path(a.warm_start_worker), Settings(**d))
        else:
            hint_probe_worker(Path(a.probe_worker), Settings(**d))
        return 0
    s = QUICK if a.quick else FULL
    if a.seeds:
        s = dataclasses.replace(s, seeds=tuple(int(x) for x in a.seeds.split(",")))
    if a.steps:
        s = dataclasses.replace(s, steps=a.steps)
    vs = variants(s)
    if a.sft_coefs:
        coefs = [c.strip() for c in a.sft_coefs.split(",") if c.strip()]
        try:
            if not coefs or min(float(c) for c in coefs) < 0:
                raise ValueError
        except ValueError:
            p.error(f"--sft-coefs needs non-negative numbers, got {a.sft_coefs!r}")
        vs = sft_coef_variants(s, coefs)
    if a.only:
        keep = {x.strip() for x in a.only.split(",")} | {BASELINE}
        unknown = keep - {v.name for v in vs}
        if unknown:
            p.error(f"--only: unknown variant(s) {', '.join(sorted(unknown))}; valid: "
                    f"{', '.join(v.name for v in vs)}")
        vs = [v for v in vs if v.name in keep]
    elif not a.all and not a.sft_coefs:
        vs = [v for v in vs if v.core]
    stem = a.out or ("learning_quick" if a.quick else "learning") + (
        "_sft_coef" if a.sft_coefs else "")
    mode = "quick" if a.quick else "full"
    command = "python benchmarks/learning.py" + "".join(f" {x}" for x in (argv or sys.argv[1:])
                                                        if x != "--report")
    t0, sha_at_start = time.time(), machine_meta()["git"]
    runs = RUNS / mode
    model = RUNS / f"warmstart-{s.warm_key()}"
    jobs = []
    for seed in s.seeds:  # seed-major: a partial benchmark has every variant
        for v in vs:
            out = runs / slug(v.name) / f"seed{seed}"
            jobs.append(Job(v, seed, out, train_args(v, seed, s, model, out)))
    wall_file = runs / f"wall_time_{stem}.json"  # the last pass, kept for --report
    if not a.report:
        warm_s = warm_start(s, RUNS)
        hint_probe(model, s)
        reused = run_jobs(jobs, a.jobs, s.steps)
        wall_file.write_text(json.dumps({"wall_s": time.time() - t0, "git": sha_at_start,
                                         "warm_start_s": warm_s, "runs": len(jobs),
                                         "reused": reused, "date": machine_meta()["date"]}))
    wall = json.loads(wall_file.read_text()) if wall_file.exists() else {}
    text = report(jobs, s, vs, RESULTS / f"{stem}.md", RESULTS / f"{stem}.png", command, wall)
    print(text)
    print(f"wrote {RESULTS / (stem + '.md')} and {RESULTS / (stem + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
