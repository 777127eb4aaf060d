"""DAPO dynamic sampling: drop groups whose rewards are all equal (zero advantage, no
gradient) and refill the batch from further prompts, up to a bound on extra rounds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Group = TypeVar("Group")


def informative_groups(group_rewards: Sequence[Sequence[float]], atol: float = 1e-8) -> list[bool]:
    """True for groups whose rewards are not all equal (max - min > atol)."""
    rows = group_rewards.tolist() if hasattr(group_rewards, "tolist") else group_rewards
    out = []
    for r in rows:
        if len(r) == 0:
            raise ValueError("a group has no rewards")
        out.append(max(r) - min(r) > atol)
    return out


def dynamic_sampling(
    generate: Callable[[int], Sequence[Group]],
    rewards_of: Callable[[Group], Sequence[float]],
    target_groups: int,
    max_extra_rounds: int,
) -> tuple[list[Group], dict[str, Any]]:
    """Collect `target_groups` informative groups.

    `generate(round)` returns a list of groups (round 0 is the normal batch, rounds 1..
    max_extra_rounds refill with new prompts; an empty refill means there is nothing more
    to draw and ends the search); `rewards_of(group)` its rewards. Groups with zero reward
    variance are dropped. Stops as soon as `target_groups` are kept (the surplus of the last
    round is cut) or the extra rounds are used up, and returns what was kept, possibly fewer
    than the target (a smaller batch rather than a stall). When no group at all is
    informative it returns round 0's groups: the step still has a batch, whose advantages
    are all zero. Stats: rounds, generated, dropped, kept.
    """
    if target_groups < 1:
        raise ValueError(f"target_groups must be >= 1, got {target_groups}")
    if max_extra_rounds < 0:
        raise ValueError(f"max_extra_rounds must be >= 0, got {max_extra_rounds}")
    kept: list[Group] = []
    first: list[Group] = []
    generated = dropped = rounds = 0
    for rnd in range(max_extra_rounds + 1):
        groups = list(generate(rnd))
        rounds += 1
        if rnd == 0:
            first = groups
        elif not groups:
            break
        generated += len(groups)
        keep = informative_groups([rewards_of(g) for g in groups]) if groups else []
        dropped += sum(not k for k in keep)
        kept.extend(g for g, k in zip(groups, keep) if k)
        if len(kept) >= target_groups:
            break
    kept = kept[:target_groups]
    stats = {"rounds": rounds, "generated": generated, "dropped": dropped, "kept": len(kept)}
    return (kept if kept else first), stats
