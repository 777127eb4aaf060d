"""`python -m rgpo_fast.train`: the end-to-end RL trainer (RGPO and its neighbours).

Launch commands
---------------
Built-in default (tiny Qwen2 built locally, SFT warm-start on countdown:warm, RGPO on
countdown:mixed; a few minutes on 2 CPU cores):

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

import os
import sys
import traceback

from rgpo_fast.errors import UserError
from rgpo_fast.trainer.cli import parse_args
from rgpo_fast.trainer.config import RunConfig
from rgpo_fast.trainer.distributed import barrier, shutdown
from rgpo_fast.trainer.hf_export import save_hf
from rgpo_fast.trainer.progress import Progress, close_all, quiet_libraries
from rgpo_fast.trainer.rl_step import rl_step
from rgpo_fast.trainer.session import (
    evaluate,
    finish,
    record,
    resume,
    save,
    set_up,
    start_fresh,
)


def run(cfg: RunConfig) -> int:
    """The run, phase by phase (each a named call; docs/trainer.md has the details)."""
    s = set_up(cfg)  # process group, start-up checks, model, data, rollout engine, optimizer
    try:
        start = resume(s) if cfg.train.resume else None
        if start is None:
            start = start_fresh(s)  # SFT warm start, eval before RL, checkpoint 0
        bar = (Progress(cfg.train.max_steps, "RL", initial=start)
               if cfg.logging.progress and s.info.is_main else None)
        for step in range(start + 1, cfg.train.max_steps + 1):
            row = rl_step(s, step)  # collect -> rollout log-probs -> assemble -> update -> sync
            if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.train.max_steps:
                row.update({f"eval/{k}": v for k, v in evaluate(s).items()})
            # The row before the checkpoint: a kill in between re-runs the step on resume
            # and truncate_after() drops the orphan row, so every step appears exactly once.
            record(s, row)
            if step == cfg.train.max_steps or (cfg.train.save_every
                                               and step % cfg.train.save_every == 0):  # fmt: skip
                save(s, step)
            if cfg.train.save_hf_every and step % cfg.train.save_hf_every == 0:
                save_hf(s.policy, s.export_files, s.out_dir / "hf" / f"step_{step:06d}", s.info)
            if bar is not None:
                bar.update(1, reward=f"{row['reward/mean']:.2f}",
                           acc=f"{row['accuracy/mean']:.2f}", guided=int(row["guided/prompts"]),
                           accepted=int(row["guided/accepted"]))
        if bar is not None:
            bar.close()
        finish(s)  # final evaluation, <output_dir>/final (HF format), summary.json, plots
    finally:
        s.close()  # the run directory's lock
    barrier(s.info)
    shutdown(s.info)
    return 0


# ------------------------------------------------------------------ entry point


REPORT = ("rgpo_fast: this is a bug, not a problem with your input. Please report it with "
          "the traceback above, the command line and the run's config.yaml.")


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 2 a problem the user can fix (one `error:` line; `--debug`
    adds the traceback); 130 interrupted (resume with --resume); 1 a bug (traceback and
    how to report it)."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    quiet_libraries()
    try:
        _, cfg = parse_args(argv)
        return run(cfg)
    except UserError as e:
        close_all()  # the error on a line of its own, not after a bar's last frame
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        close_all()
        print("error: interrupted (resume with the same command and --resume)", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - anything else is a bug: keep it visible
        close_all()
        traceback.print_exc()
        print(REPORT, file=sys.stderr)
        return 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
