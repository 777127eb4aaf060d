"""The SFT warm start: supervised steps on reference rationales before RL.

It runs through the same fused loss as RL (every sample a transferred one, sft_coef = 1),
so it needs no second training path. A share of the prompts carries a random rationale
prefix as a hint, so the model learns the hint format the guided round uses.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from rgpo_fast.algos import guidance
from rgpo_fast.algos.presets import get_preset
from rgpo_fast.batch import assemble_batch
from rgpo_fast.data.multimodal import PromptEncoder
from rgpo_fast.data.prompts import encode_text
from rgpo_fast.data.types import Example, Sample
from rgpo_fast.guided_round import rationale_segments
from rgpo_fast.trainer.config import RunConfig
from rgpo_fast.trainer.distributed import DistInfo
from rgpo_fast.trainer.nonfinite import NonFiniteGuard
from rgpo_fast.trainer.progress import Progress
from rgpo_fast.trainer.update import (
    backward_batch,
    make_optimizer,
    make_scheduler,
    optimizer_step,
)

SampleRows = Callable[[random.Random], "list[Sample]"]


def sft_samples(examples: Sequence[Example], tok, cfg: RunConfig,
                rng: random.Random, processor=None) -> list[Sample]:  # fmt: skip
    """Rationale + EOS after the prompt; with probability `train.sft_hint_prob` the prompt
    carries a random rationale prefix (1 .. N-1 segments) as the hint. Problems with images
    show them (`processor`: the vision-language model's)."""
    algo, out = cfg.algo, []
    encoder = PromptEncoder(tok, processor, system=cfg.data.system_prompt,
                            hint_template=algo.hint_template)
    for ex in examples:
        hint = None
        if rng.random() < cfg.train.sft_hint_prob and ex.rationale:
            segs = rationale_segments(ex.rationale, algo, tok)
            if len(segs) > 1:
                hint = guidance.build_hint(segs, rng.randint(1, len(segs) - 1))
        vision = encoder.vision(ex.images, f"SFT problem {ex.uid}")
        prompt = encoder.encode(ex.problem, hint, vision)
        resp = encode_text(tok, ex.rationale) + [tok.eos_token_id]
        out.append(Sample(prompt_ids=prompt, response_ids=resp, kind="sft", reward=1.0,
                          vision=vision))
    return out


def sft_guard(cfg: RunConfig) -> NonFiniteGuard:
    return NonFiniteGuard("SFT warm start", f"Lower train.sft_lr (now {cfg.train.sft_lr:g})",
                          max_skips=cfg.train.max_nonfinite_skips)


def sft_warm_start(policy, examples: Sequence[Example], tok, cfg: RunConfig, info: DistInfo,
                   rows_fn: SampleRows | None = None, guard: NonFiniteGuard | None = None,
                   processor=None) -> float:  # fmt: skip
    """`train.sft_steps` supervised steps; returns the last step's loss. A non-finite loss
    or gradient norm stops it, or within `train.max_nonfinite_skips` drops that step (`guard`
    counts; default: a guard of its own, trainer/nonfinite.py).

    Each step's global batch is `rows_fn(rng)` (default: `sft_batch_size` random examples
    through `sft_samples`); the rng is seeded identically on every rank, each rank trains
    its slice. Benchmarks pass their own rows (e.g. extra copy rows) to reuse this loop."""
    if rows_fn is None:
        def rows_fn(rng: random.Random) -> list[Sample]:
            batch_ex = [rng.choice(examples) for _ in range(cfg.train.sft_batch_size)]
            return sft_samples(batch_ex, tok, cfg, rng, processor)

    steps = cfg.train.sft_steps
    guard = guard or sft_guard(cfg)
    opt = make_optimizer(policy, cfg.train.sft_lr, cfg.optim)
    sched = make_scheduler(opt, steps, max(steps // 20, 1), "cosine")
    sft_algo = get_preset("rgpo", transfer="sft", sft_coef=1.0)
    rng = random.Random(f"sft:{cfg.train.seed}")  # same draws on every rank
    loss = float("nan")
    bar = Progress(steps, "SFT warm-start") if cfg.logging.progress and info.is_main else None
    for step in range(1, steps + 1):
        local = rows_fn(rng)[info.rank :: info.world_size]
        batch = assemble_batch(local, sft_algo, pad_token_id=tok.pad_token_id)
        m = backward_batch(policy, batch, sft_algo.loss_config(),
                           cfg.train.sft_micro_batch_size, info)  # fmt: skip
        loss = m["loss/total"]
        optimizer_step(policy, opt, sched, cfg.optim.grad_clip, guard=guard, step=step, loss=loss)
        if bar is not None:
            bar.update(1, loss=f"{loss:.3f}")
    if bar is not None:
        bar.close()
    return loss
