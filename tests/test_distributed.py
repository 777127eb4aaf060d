"""2 processes (gloo, FSDP2) == 1 process on the same global batch: loss and updated weights.

The test builds a fixed global batch (unguided RL rows with advantages, SFT-transferred rows,
hint-masked tokens), runs one optimisation step in this process, then launches
`torchrun --nproc_per_node 2` on this file: each rank takes every other row, shards the
policy with FSDP2, and runs the same step with micro-batch size 1 (so the ranks run
different numbers of micro-batches and the short one joins FSDP's collectives with a
zero loss). Loss normalisers are all-reduced and FSDP2 sums gradients, so the results
must match to float32 round-off.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch

from rgpo_fast.algos.presets import get_preset
from rgpo_fast.batch import Rollout, assemble_batch
from rgpo_fast.trainer.config import OptimConfig
from rgpo_fast.trainer.loop import backward_batch, make_optimizer, optimizer_step

ROOT = Path(__file__).resolve().parents[1]
AGGS = ("token-mean", "seq-mean-token-mean")


def global_rollouts(vocab: int) -> list[Rollout]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(7):
        p = int(torch.randint(3, 8, (1,), generator=g))
        n = int(torch.randint(2, 9, (1,), generator=g))
        ids = torch.randint(3, vocab, (p + n,), generator=g).tolist()
        kind = "transferred" if i in (2, 5) else "unguided"
        hint = [j < 2 for j in range(n)] if i == 4 else None
        rows.append(
            Rollout(
                prompt_ids=ids[:p],
                response_ids=ids[p:],
                group=i // 3,
                kind=kind,
                reward=float(torch.rand((), generator=g) > 0.5),
                hint_mask=hint,
            )
        )
    return rows


def one_step(policy, rollouts, agg: str, micro: int, info):
    algo = get_preset("rgpo", loss_agg=agg, sft_coef=0.5)
    batch = assemble_batch(rollouts, algo, pad_token_id=0)
    opt = make_optimizer(policy, 1e-2, OptimConfig())
    m = backward_batch(policy, batch, algo.loss_kwargs(), micro, info, max_response_len=8)
    optimizer_step(policy, opt, None, grad_clip=0.05)  # small: clipping is active
    return m["loss/total"]


def build(model_dir):
    from rgpo_fast.trainer.policy import PolicyModule
    from rgpo_fast.trainer.tiny_model import load_model_and_tokenizer

    lm, _ = load_model_and_tokenizer(model_dir)
    return PolicyModule(lm, impl="torch")


def worker(model_dir: str, out_file: str) -> None:
    from rgpo_fast.trainer.distributed import (
        full_state_dict,
        init_distributed,
        shard_model,
        shutdown,
    )

    torch.set_num_threads(1)
    info = init_distributed("cpu")
    results = {}
    for agg in AGGS:
        policy = shard_model(build(model_dir), info)
        rollouts = global_rollouts(policy.lm.config.vocab_size)[info.rank :: info.world_size]
        loss = one_step(policy, rollouts, agg, 1, info)
        results[agg] = {"loss": loss, "params": full_state_dict(policy)}
    if info.rank == 0:
        torch.save(results, out_file)
    shutdown(info)


def test_two_processes_equal_one(tmp_path):
    from rgpo_fast.trainer.distributed import DistInfo
    from rgpo_fast.trainer.tiny_model import TinyModelSpec, ensure_tiny_model

    spec = TinyModelSpec(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
    )
    model_dir = ensure_tiny_model(spec, tmp_path / "cache")
    out = tmp_path / "dist.pt"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(Path(__file__)),
        str(model_dir),
        str(out),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    torch.set_num_threads(1)
    single = {}
    for agg in AGGS:  # the single-process reference, computed while the workers run
        policy = build(model_dir)
        loss = one_step(policy, global_rollouts(policy.lm.config.vocab_size), agg, 3, DistInfo())
        single[agg] = {"loss": loss, "params": policy.state_dict()}
    log = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 0, log[-3000:]
    dist = torch.load(out, weights_only=False)
    for agg in AGGS:
        assert abs(dist[agg]["loss"] - single[agg]["loss"]) < 1e-5, agg
        moved = 0
        ref0 = build(model_dir).state_dict()
        for name, p in single[agg]["params"].items():
            q = dist[agg]["params"][name]
            # Adam's first step is lr * g / (|g| + eps): for a gradient entry near eps
            # (1e-8) the round-off of a different summation order (ranks, micro-batch
            # grouping) moves the update by ~1e-6, so 1e-5 = 1e-3 of the lr 1e-2 step.
            torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-5, msg=f"{agg}: {name}")
            moved += not torch.equal(p, ref0[name])
        assert moved > 0.9 * len(ref0)  # the step really updated the weights


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
