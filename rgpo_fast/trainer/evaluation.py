"""Held-out evaluation: greedy accuracy, mean@k and pass@k with the training verifiers.

Under data parallelism every rank scores a strided shard and the counts are summed, so
the numbers do not depend on the number of ranks. The per-problem greedy outcomes (in the
set's order, whatever the ranks) can be collected too: two evaluations of the same
problems then give a paired difference (metrics.paired_gain).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from rgpo_fast.data.multimodal import PromptEncoder
from rgpo_fast.data.types import Example
from rgpo_fast.rewards.contract import score
from rgpo_fast.rollout.base import SamplingParams, with_images
from rgpo_fast.trainer.distributed import DistInfo, all_reduce_sum


def evaluate_set(engine, tokenizer, examples: Sequence[Example],
                 reward_fn: Callable[[str, str], float], *, max_new_tokens: int, pass_k: int,
                 temperature: float, seed: int, info: DistInfo, system: str | None = None,
                 threshold: float = 0.5, mean_k: int = 0,
                 per_problem: dict[str, list[float]] | None = None,
                 processor=None) -> dict[str, float]:
    """{'accuracy': greedy accuracy, 'mean@k': the average success of k samples per problem
    (less noisy than one greedy answer), 'pass@k': share with >= 1 success in k samples}. A
    sample is correct when its reward reaches `threshold` (the trainer passes
    algo.success_threshold, the value that triggers guidance). `per_problem`, when given,
    receives each metric's per-problem values ('accuracy': 1.0 / 0.0, 'mean@k': the
    problem's success share) in the order of `examples`. `processor`: a vision-language
    model's, for problems with images."""
    everything = list(examples)
    shard = everything[info.rank::info.world_size]
    encoder = PromptEncoder(tokenizer, processor, system=system)
    vision = [encoder.vision(ex.images, f"held-out problem {ex.uid}") for ex in shard]
    prompts = [encoder.encode(ex.problem, vision=v) for ex, v in zip(shard, vision)]
    images = with_images(vision)
    correct = passed = 0
    outcomes = torch.zeros(len(everything), dtype=torch.float64)
    shares = torch.zeros(len(everything), dtype=torch.float64)
    if prompts:
        def correct_answer(out_ids, ex, what: str) -> bool:
            text = tokenizer.decode(out_ids, skip_special_tokens=True)
            where = f"{what} held-out problem {ex.uid}"
            return score(reward_fn, text, ex.answer, where) >= threshold

        greedy = engine.generate(prompts, SamplingParams(n=1, max_new_tokens=max_new_tokens,
                                                         temperature=0.0, seed=seed), **images)
        for i, (ex, out) in enumerate(zip(shard, greedy)):
            ok = correct_answer(out.completions[0].token_ids, ex, "the greedy answer to")
            correct += ok
            outcomes[info.rank + i * info.world_size] = float(ok)
        need = max(pass_k, mean_k)
        if need:  # pass@k and mean@k read one set of samples: the first k of them each
            sampled = engine.generate(prompts, SamplingParams(
                n=need, max_new_tokens=max_new_tokens, temperature=temperature,
                seed=seed + 1), **images)
            for i, (ex, out) in enumerate(zip(shard, sampled)):
                wins = hit = 0
                for k, c in enumerate(out.completions[:need]):
                    ok = correct_answer(c.token_ids, ex, f"sample {k} of")
                    wins += ok and k < mean_k
                    hit = hit or (ok and k < pass_k)
                    if hit and k + 1 >= mean_k:  # pass@k decided and mean@k complete
                        break
                passed += hit
                if mean_k:
                    shares[info.rank + i * info.world_size] = wins / mean_k
    # Each rank filled its own problems: the sums are the whole set, in its order.
    outcomes = all_reduce_sum(outcomes, info)
    shares = all_reduce_sum(shares, info) if mean_k > 0 else shares
    if per_problem is not None:
        per_problem["accuracy"] = outcomes.tolist()
        if mean_k > 0:
            per_problem[f"mean@{mean_k}"] = shares.tolist()
    counts = all_reduce_sum(torch.tensor([correct, passed, len(shard)], dtype=torch.float64), info)
    n = max(float(counts[2]), 1.0)
    res = {"accuracy": float(counts[0]) / n}
    if mean_k > 0:
        res[f"mean@{mean_k}"] = float(shares.sum()) / n
    if pass_k > 0:
        res[f"pass@{pass_k}"] = float(counts[1]) / n
    return res


def evaluate_all(engine, tokenizer, sets: dict[str, list[Example]], reward_fn, *,
                 max_new_tokens: int, pass_k: int, temperature: float, seed: int,
                 info: DistInfo, system: str | None = None, threshold: float = 0.5,
                 mean_k: int = 0, per_problem: dict[str, list[float]] | None = None,
                 processor=None) -> dict[str, float]:
    """Flat metrics: {'<set>_accuracy': ..., '<set>_mean@k': ..., '<set>_pass@k': ...} for
    every eval set. `reward_fn`: one reward for every set, or a mapping set name -> that
    set's reward. `per_problem`, when given, receives the per-problem values of the
    accuracy and mean@k under the same flat names."""
    out: dict[str, float] = {}
    for name, examples in sets.items():
        fn = reward_fn[name] if isinstance(reward_fn, Mapping) else reward_fn
        items: dict[str, list[float]] | None = {} if per_problem is not None else None
        res = evaluate_set(engine, tokenizer, examples, fn, max_new_tokens=max_new_tokens,
                           pass_k=pass_k, temperature=temperature, seed=seed, info=info,
                           system=system, threshold=threshold, mean_k=mean_k,
                           per_problem=items, processor=processor)
        if per_problem is not None:
            per_problem.update({f"{name}_{k}": v for k, v in items.items()})
        for k, v in res.items():
            out[f"{name}_{k}"] = v
    return out
