"""Learning benchmark: what is compared (variants) and the settings every variant shares."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs" / "bench_learning"
DRIVER = ROOT / "benchmarks" / "learning.py"  # workers run as `python DRIVER --...-worker`
BASELINE = "grpo"
MAIN = "rgpo"


@dataclass(frozen=True)
class Variant:
    """One row of the table: a trainer preset plus field overrides."""

    name: str
    algo: str
    overrides: tuple[tuple[str, str], ...] = ()
    ablation: bool = False
    note: str = ""
    core: bool = True  # run by default; the others with --only NAME (or --all)


@dataclass(frozen=True)
class Settings:
    """Everything that defines a benchmark (the same for every variant)."""

    # warm start (done once, cached): SFT on worked solutions of 2-4-number problems, long
    # enough that the model half-masters 4-number search (the hint probe's table)
    tiny_layers: int = 2
    tiny_hidden: int = 128
    tiny_intermediate: int = 256
    sft_data: str = "countdown:warm"
    sft_steps: int = 4000
    sft_batch_size: int = 32
    sft_lr: float = 3e-3
    # rows per forward/backward: the rows have similar lengths (no hint in the prompt:
    # guidance places its hint in the response, which the model continues)
    sft_micro_batch: int = 32
    warm_threads: int = 2  # the warm start runs alone, before the training runs
    warm_seed: int = 0
    # RL (the same for every algorithm)
    train_data: str = "countdown:mixed"
    eval_data: str = "countdown:easy,countdown:hard"
    n_train: int = 2048  # problems drawn; hard ones repeat (data/countdown.py), easy do not
    steps: int = 300
    prompts_per_step: int = 16
    group_size: int = 8
    max_new_tokens: int = 48
    lr: float = 3e-4
    schedule: str = "cosine"
    eval_every: int = 25
    n_eval: int = 256  # per split, the same problems for every run (data.eval_seed)
    eval_mean_k: int = 8  # held-out mean@k: k samples per problem at temperature 1
    eval_train: int = 256  # training problems scored like held-out ones (memorisation)
    eval_pass_k: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    # RGPO: the hint starts the response (the tiny model continues a partial solution; it
    # does not restate one from the prompt), the accepted solution is trained whole under
    # the hint-free prompt, with this NLL weight
    hint_placement: str = "response"
    transferred_hint: str = "trained"
    sft_coef: float = 0.1
    hint_escalation: str = "round"  # every partial level a prompt needs, in one step
    copies: str = "once"  # a copy of the reference is trained at most once per prompt and step

    @property
    def metric(self) -> str:
        """The held-out metric the table and the targets use."""
        return f"mean@{self.eval_mean_k}" if self.eval_mean_k else "accuracy"

    def warm_key(self) -> str:
        """Cache key of the warm start: the settings that shape it and the first SFT
        problems themselves (a task whose generator changed gets a new warm start)."""
        from rgpo_fast.trainer.data_sources import load_source

        keys = ("tiny_layers", "tiny_hidden", "tiny_intermediate", "sft_data", "sft_steps",
                "sft_batch_size", "sft_lr", "sft_micro_batch", "warm_seed", "max_new_tokens")
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        first = load_source(self.sft_data, n=64, seed=self.warm_seed + 1, heldout=False)
        blob += "".join(ex.problem + ex.rationale for ex in first)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


FULL = Settings()
QUICK = dataclasses.replace(FULL, sft_steps=1000, steps=40, eval_every=20, n_eval=128,
                            eval_train=64, seeds=(0, 1))  # fmt: skip


COPY_NOTES = {"train": "every accepted copy of the reference trained",
              "once": "at most one copy per prompt and step",
              "drop": "only the model's own solutions transferred"}


def variants(s: Settings) -> list[Variant]:
    """The core comparison (GRPO, RGPO and the ablations that explain RGPO's result) and,
    with --all or --only, the other algorithms and ablations."""
    rgpo = (("algo.sft_coef", repr(s.sft_coef)), ("algo.hint_placement", s.hint_placement),
            ("algo.transferred_hint", s.transferred_hint),
            ("algo.hint_escalation", s.hint_escalation), ("algo.copies", s.copies))  # fmt: skip

    def rgpo_with(**changes: str) -> tuple[tuple[str, str], ...]:
        return tuple({**dict(rgpo), **{f"algo.{k}": v for k, v in changes.items()}}.items())

    return [
        Variant("grpo", "grpo"),
        Variant("rgpo", "rgpo", rgpo, note=f"copies={s.copies}"),
        *[Variant(f"rgpo: copies={rule}", "rgpo", rgpo_with(copies=rule), ablation=True,
                  note=COPY_NOTES[rule]) for rule in COPY_NOTES if rule != s.copies],
        Variant("rgpo: one level per visit", "rgpo", rgpo_with(hint_escalation="visit"),
                ablation=True, note="hint_escalation=visit"),
        Variant("rgpo: fixed full hint", "rgpo", rgpo_with(adaptive_levels="false"),
                ablation=True, note="no level adaptation, whole solution shown", core=False),
        Variant("rgpo: transfer=is", "rgpo", rgpo_with(transfer="is", transferred_hint="masked"),
                ablation=True, note="Guide-style IS transfer (hint tokens masked)", core=False),
        Variant("rgpo: accept any success", "rgpo", rgpo_with(acceptance="any_success"),
                ablation=True, note="acceptance=any_success", core=False),
        Variant("dapo", "dapo", core=False),
        Variant("ghpo", "ghpo", core=False),
        Variant("luffy", "luffy", core=False),
    ]


def train_args(v: Variant, seed: int, s: Settings, model: Path, out: Path,
               threads: int = 1) -> list[str]:
    """`python -m rgpo_fast.train` arguments of variant `v`, seed `seed`, from the warm start
    `model` (also the TRL parity run's rgpo_fast side, benchmarks/e2e_vs_trl.py)."""
    args = ["--model", str(model), "--data", s.train_data, "--algo", v.algo,
            "--output-dir", str(out), "--seed", str(seed), "--max-steps", str(s.steps),
            "--train.sft_steps", "0", "--data.sft", "", "--train.prompts_per_step",
            str(s.prompts_per_step), "--rollout.n", str(s.group_size),
            "--rollout.max_new_tokens", str(s.max_new_tokens), "--data.n_train", str(s.n_train),
            "--optim.lr", str(s.lr), "--optim.schedule", s.schedule,
            "--eval.every", str(s.eval_every), "--eval.pass_k", str(s.eval_pass_k),
            "--eval.mean_k", str(s.eval_mean_k), "--eval.train_problems", str(s.eval_train),
            "--data.n_eval", str(s.n_eval), "--data.eval", s.eval_data,
            "--train.save_every", "0", "--train.keep_checkpoints", "1",
            "--train.threads", str(threads),
            "--logging.progress", "false", "--logging.plots", "false"]  # fmt: skip
    for k, val in v.overrides:
        args += [f"--{k}", val]
    return args


def sft_coef_variants(s: Settings, coefs: list[str]) -> list[Variant]:
    """GRPO, RGPO as in the main table (reused when already run) and RGPO at each other
    `sft_coef`: the weight of transferred samples."""
    every = {v.name: v for v in variants(s)}
    out = [every[BASELINE], every[MAIN]]
    main_overrides = dict(every[MAIN].overrides)
    for c in coefs:
        if float(c) != s.sft_coef:
            over = tuple({**main_overrides, "algo.sft_coef": c}.items())
            out.append(Variant(f"rgpo sft_coef={c}", "rgpo", over))
    return out


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")
