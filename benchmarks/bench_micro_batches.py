"""Micro-batches grouped by length vs in batch order: time of one forward/backward step.

    python benchmarks/bench_micro_batches.py [--repeats 7] [--threads 1]

`trainer.update.micro_batches` takes rows in order of length, so `trim` pads each
micro-batch only to its own longest row. This script times `backward_batch` on the same
batch with that grouping and with the former one (consecutive rows in batch order),
alternating the two in one process (median of --repeats), for two batch shapes of the
learning benchmark (tiny Qwen2, 2 layers x 128, character tokenizer):

- `sft`: the benchmark warm start's batch, 32 rows: 24 problems with their rationale as
  target (half with a rationale prefix as hint) and 8 copy rows (a hard problem with its
  whole solution in the prompt), micro-batches of 8 rows;
- `sft_default`: the trainer's own SFT warm-start batch (`make train`), 32 rows, half
  with a hint: micro-batches of 8 by length (`train.sft_micro_batch_size`) against the
  former single micro-batch of all 32 rows in batch order;
- `rl`: an RL step's batch, 16 prompts x 8 samples with responses of 6-48 tokens, one
  group in four guided (hint in the prompt), micro-batches of 64 rows (trainer default).

Both groupings give the same gradients (tests/test_trainer_update.py); only the time differs.
Rows are appended to benchmarks/results/bench_micro_batches.csv.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def contiguous(lengths, size):
    """The former grouping: consecutive rows in batch order."""
    n = len(lengths)
    return [list(range(s, min(s + size, n))) for s in range(0, n, size)]


def make_rows(kind: str, vocab: int, rng: random.Random):
    from rgpo_fast.data.types import Sample

    def ids(n):
        return [rng.randrange(3, vocab) for _ in range(n)]

    rows = []
    if kind.startswith("sft"):  # lengths measured on arith:easy / copy rows, chat template
        for i in range(32):
            if i % 4 == 3 and kind == "sft":
                p, r = 90, 37  # copy row: prompt with the whole solution, ~127 tokens
            elif i % 2:
                p, r = 50, 24  # easy problem with a rationale prefix as hint, ~74
            else:
                p, r = 22, 24  # easy problem, ~46
            rows.append(Sample(prompt_ids=ids(p), response_ids=ids(r), kind="sft", reward=1.0))
    else:
        for g in range(16):
            p = 60 if g % 4 == 0 else 28  # guided groups carry the hint in the prompt
            for _ in range(8):
                rows.append(Sample(prompt_ids=ids(p), response_ids=ids(rng.randint(6, 48)),
                                   group=g, kind="unguided", reward=float(rng.random() < .4)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if a.repeats < 1 or a.threads < 1:
        ap.error("--repeats and --threads must be >= 1")

    import torch

    from rgpo_fast.algos.presets import get_preset
    from rgpo_fast.batch import assemble_batch
    from rgpo_fast.trainer.distributed import DistInfo
    from rgpo_fast.trainer.policy import PolicyModule
    from rgpo_fast.trainer.tiny_model import TinyModelSpec, build_model, build_tokenizer
    from rgpo_fast.trainer.update import backward_batch, micro_batches

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    lm = build_model(TinyModelSpec(num_hidden_layers=2, hidden_size=128, intermediate_size=256),
                     build_tokenizer())
    policy = PolicyModule(lm, impl="auto")
    sorted_grouping = micro_batches
    rows_out = []
    sft = get_preset("rgpo", transfer="sft", sft_coef=1.0)
    # (batch, micro-batch rows grouped by length, micro-batch rows of the batch-order baseline)
    for kind, micro, base_micro, algo in (("sft", 8, 8, sft), ("sft_default", 8, 32, sft),
                                          ("rl", 64, 64, get_preset("grpo"))):
        batch = assemble_batch(make_rows(kind, lm.config.vocab_size, random.Random(0)), algo,
                               pad_token_id=0)
        times = {"by_length": [], "batch_order": []}
        for rep in range(a.repeats + 1):  # round 0 warms up and is not counted
            for name, fn, m in (("by_length", sorted_grouping, micro),
                                ("batch_order", contiguous, base_micro)):
                policy.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                backward_batch(policy, batch, algo.loss_config(), m, DistInfo(), group_rows=fn)
                if rep:
                    times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        mask = batch.attention_mask
        real = int(mask.sum())
        padded = {name: sum(len(c) * int(mask[c].sum(-1).max())
                            for c in fn(mask.sum(-1).tolist(), m))
                  for name, fn, m in (("by_length", sorted_grouping, micro),
                                      ("batch_order", contiguous, base_micro))}
        ratio = med["by_length"] / med["batch_order"]
        print(f"{kind}: {batch.batch_size} rows: by length in micro-batches of {micro} "
              f"{1e3 * med['by_length']:.0f} ms, batch order in micro-batches of {base_micro} "
              f"{1e3 * med['batch_order']:.0f} ms "
              f"-> {ratio:.2f}x; tokens computed {padded['by_length']} vs "
              f"{padded['batch_order']} ({real} real)")
        rows_out.append({"date": time.strftime("%Y-%m-%d %H:%M"), "git": common.git_sha(),
                         "machine": common.machine(), "threads": a.threads, "batch": kind,
                         "rows": batch.batch_size, "micro": micro, "base_micro": base_micro,
                         "by_length_ms": round(1e3 * med["by_length"], 1),
                         "batch_order_ms": round(1e3 * med["batch_order"], 1),
                         "ratio": round(ratio, 3), "tokens_by_length": padded["by_length"],
                         "tokens_batch_order": padded["batch_order"], "tokens_real": real,
                         "repeats": a.repeats})
    print(f"wrote {common.append_csv('bench_micro_batches.csv', rows_out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
