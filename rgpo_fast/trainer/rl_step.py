"""One RL step: collect -> rollout log-probs -> assemble -> update -> sync.

    collect     the engine samples G responses per prompt, the verifier scores them, the
                algorithm's guidance runs (trainer/collect.py); hint levels are merged
                across ranks; the engine sleeps
    rollout     `is`-transferred samples whose hinted-context log-probs are missing get
    log-probs   them from the policy (update.fill_rollout_logprobs)
    assemble    samples -> TrainBatch with advantages and masks (batch.assemble_batch);
                with engine log-probs (vLLM) the trainer's old log-probs are recomputed for
                truncated importance sampling
    update      train.ppo_epochs passes of train.mini_batches optimizer steps, each a
                fused-loss forward/backward over micro-batches (trainer/rl_update.py)
    sync        new weights into the engine (weight_sync.sync_engine)
"""

from __future__ import annotations

import time
import zlib

from rgpo_fast.batch import assemble_batch
from rgpo_fast.trainer.collect import collect
from rgpo_fast.trainer.distributed import DistInfo
from rgpo_fast.trainer.metrics import PhaseTimer, step_row
from rgpo_fast.trainer.rl_update import rl_update
from rgpo_fast.trainer.session import Session, reward_counts
from rgpo_fast.trainer.update import fill_rollout_logprobs, policy_logprobs


def step_seed(seed: int, step: int, rank: int, salt: str = "rl") -> int:
    """Sampling seed of (run seed, step, rank): a resumed run samples what the original would."""
    return zlib.crc32(f"{salt}:{seed}:{step}:{rank}".encode()) & 0x7FFFFFFF


def rl_step(s: Session, step: int, timer: PhaseTimer | None = None) -> dict:
    """Run step `step` (see module docstring); -> its metrics row."""
    cfg, info = s.cfg, s.info
    timer = timer or PhaseTimer(info.device)
    t0 = time.perf_counter()
    per_rank = max(cfg.train.prompts_per_step // info.world_size, 1)

    def draw():  # the same global prompt list on every rank; each takes its strided share
        return s.sampler.next(per_rank * info.world_size)[info.rank :: info.world_size]

    with timer("generate"):
        collected = collect(s.collect, draw(), s.levels, step_seed(cfg.train.seed, step,
                                                                    info.rank), refill=draw)
        s.engine.sleep(level=2)
    # Hint levels are one table on every rank: merge this step's updates from all ranks.
    for updates in all_gather_objects(collected.level_updates, info):
        for uid, level in updates.items():
            s.levels.set(uid, level)
    pad = s.tokenizer.pad_token_id
    with timer("old_logprob"):
        fill_rollout_logprobs(s.policy, collected.samples, pad, cfg.train.micro_batch_size, info)
    batch = assemble_batch(collected.samples, cfg.algo, pad_token_id=pad)
    several_updates = cfg.train.ppo_epochs * cfg.train.mini_batches > 1
    if batch.rollout_logprobs is not None or several_updates:
        with timer("old_logprob"):
            batch.set_old_logprobs(
                policy_logprobs(s.policy, batch, cfg.train.micro_batch_size, info))
    if s.ref_policy is not None:  # algo.beta > 0: the KL term's reference log-probs
        with timer("old_logprob"):
            batch.ref_logprobs = policy_logprobs(s.ref_policy, batch,
                                                      cfg.train.micro_batch_size, info)
    with timer("update"):
        # Rank r holds global prompts r, r + W, ... (draw): its local prompt i is i * W + r.
        update = rl_update(s.policy, s.optimizer, batch, cfg.algo.loss_config(),
                           micro=cfg.train.micro_batch_size, info=info,
                           grad_clip=cfg.optim.grad_clip, epochs=cfg.train.ppo_epochs,
                           mini_batches=cfg.train.mini_batches,
                           prompt_index=batch.group_ids * info.world_size + info.rank,
                           num_prompts=per_rank * info.world_size,
                           seed=step_seed(cfg.train.seed, step, 0, salt="mini-batches"),
                           max_response_len=cfg.rollout.max_new_tokens,
                           guard=s.rl_guard, step=step)  # fmt: skip
        s.scheduler.step()  # once per RL step, whatever the number of optimizer steps
    with timer("sync"):
        s.sync()
    row = step_row(step, collected, batch, update, timer.pop(), time.perf_counter() - t0,
                   s.scheduler.get_last_lr()[0], info, cfg.algo.success_threshold)  # fmt: skip
    row.update(reward_counts([s.reward_fn], info, prefix="reward/"))
    if hasattr(s.engine, "memory_report"):  # colocated vLLM: memory after sleep / wakes
        row.update(s.engine.memory_report())
    return row


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
