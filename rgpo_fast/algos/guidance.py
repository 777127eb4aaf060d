"""RGPO's decisions as pure functions (docs/algorithms.md, "RGPO"), plus GHPO's.

Segmentation, the hint-level table and its update rule, the trigger, the hint, acceptance
and the per-prompt outcome: plain values in, plain values out, no tokenizer and no record
types. `rgpo_fast/guided_round.py` runs them in order (one guided round, with the sampler
and the scorer passed in) for the trainer and the TRL adapter alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# ----------------------------------------------------------------------------- segmentation

# A numbered step starts a line: "1.", "2)", "Step 3:", "(4)".
_STEP_START = re.compile(r"(?im)^[ \t]*(?:step\s*\d+\s*[:.)]|\(?\d+[.)])\s")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _units(text: str, mode: str) -> list[str]:
    """Split `text` into units that concatenate back to `text` exactly."""
    if mode == "lines":
        return [u for u in text.splitlines(keepends=True) if u]
    if mode == "sentences":
        units, last = [], 0
        for m in _SENTENCE_END.finditer(text):
            units.append(text[last : m.end()])
            last = m.end()
        units.append(text[last:])
        return [u for u in units if u]
    if mode == "steps":
        starts = [m.start() for m in _STEP_START.finditer(text)]
        if not starts:
            return [text] if text else []
        starts = [0] + [s for s in starts if s > 0]  # text before step 1 joins step 1
        return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
    raise ValueError(f"unknown segmentation unit {mode!r}")


def _group(units: list[str], n: int) -> list[str]:
    """Contiguous groups of units, as even as possible; fewer than n if fewer units."""
    if len(units) <= n:
        return list(units)
    bounds = [round(i * len(units) / n) for i in range(n + 1)]
    return ["".join(units[a:b]) for a, b in zip(bounds, bounds[1:])]


TokenStarts = Callable[[str], "list[int] | None"]


def _token_chunks(text: str, n: int, token_starts: TokenStarts | None) -> list[str]:
    """n chunks of (about) equal token count, cut at token character offsets.

    `token_starts(text)` gives the character offset where each token starts (None when the
    tokenizer has no offsets). Without it, whitespace-separated words stand in for tokens,
    then characters if there is a single word."""
    offsets = token_starts(text) if token_starts is not None else None
    if offsets is None:
        offsets = [m.start() for m in re.finditer(r"\S+", text)]
        if len(offsets) < 2:
            offsets = list(range(len(text)))
    if not offsets:
        return [text] if text else []
    offsets[0] = 0  # leading whitespace belongs to the first chunk
    k = min(n, len(offsets))
    cuts = [offsets[round(i * len(offsets) / k)] for i in range(k)] + [len(text)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


# Token chunks a rationale without steps, lines or sentences is cut into when no segment
# count is given (the other units are the rationale's own).
TOKEN_CHUNKS = 4


def segment_rationale(
    text: str, n: int | None = None, mode: str = "auto", token_starts: TokenStarts | None = None
) -> list[str]:
    """Split a rationale into contiguous segments; "".join(result) == text.

    mode: "lines", "sentences", "steps" (numbered steps), "tokens" (equal token chunks), or
    "auto": steps if there are >= 2 numbered steps, else lines if >= 2 non-empty lines,
    else sentences if >= 2, else equal token chunks (cut at `token_starts(text)`, see
    data.prompts.token_starts).

    n=None (the default) keeps the rationale's own units, one segment per step, line or
    sentence (TOKEN_CHUNKS chunks for "tokens"): a hint level then shows whole steps. An int
    n groups the units into at most n contiguous segments, as even as possible (fewer
    units than n give one segment each). An empty rationale gives [] (never guided).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be an int >= 1 or None, got {n!r}")
    if not text.strip():
        return []
    chunks = TOKEN_CHUNKS if n is None else n
    if mode == "auto":
        for candidate in ("steps", "lines", "sentences"):
            units = _units(text, candidate)
            if len([u for u in units if u.strip()]) >= 2:
                return _grouped(units, n)
        return _token_chunks(text, chunks, token_starts)
    if mode == "tokens":
        return _token_chunks(text, chunks, token_starts)
    if mode not in ("lines", "sentences", "steps"):
        raise ValueError(f"mode={mode!r} is invalid; valid: auto, lines, sentences, steps, tokens")
    return _grouped(_units(text, mode), n)


def _grouped(units: list[str], n: int | None) -> list[str]:
    """The units themselves (n None), or grouped into at most n. A blank unit (an empty
    line) joins the unit before it, so no level adds nothing but whitespace."""
    merged: list[str] = []
    for u in units:
        if merged and not u.strip():
            merged[-1] += u
        else:
            merged.append(u)
    return merged if n is None else _group(merged, n)


# ----------------------------------------------------------------------------- hint levels


class HintLevels:
    """Per-prompt hint level l >= 0, keyed by the example uid; plain serialisable state (a
    dict of ints) so it survives checkpoints. Unknown prompts start at level 0.

    Level l means "show l segments the next time this prompt is guided" (0: not yet
    needed, shown as 1); each prompt's ceiling is its own segment count, applied where the
    segments are known (`max_hint_level`, `hint_level_used`)."""

    def __init__(self, adaptive: bool = True) -> None:
        self.adaptive = adaptive
        self.levels: dict[str, int] = {}

    def get(self, uid: str) -> int:
        return self.levels.get(uid, 0)

    def get_many(self, uids: Sequence[str]) -> list[int]:
        return [self.get(u) for u in uids]

    def set(self, uid: str, level: int) -> None:
        """Store a level computed elsewhere (e.g. merged from other ranks)."""
        if isinstance(level, bool) or not isinstance(level, int) or level < 0:
            raise ValueError(f"hint level must be an int >= 0, got {level!r}")
        if level == 0:
            self.levels.pop(uid, None)  # keep the table small: 0 is the default
        else:
            self.levels[uid] = level

    def state_dict(self) -> dict[str, Any]:
        return {"adaptive": self.adaptive, "levels": dict(self.levels)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # checkpoints written before per-prompt ceilings also hold "n_segments" (ignored:
        # a level above a prompt's segment count is clamped where it is used)
        levels = {str(k): int(v) for k, v in state["levels"].items()}
        bad = {k: v for k, v in levels.items() if v < 0}
        if bad:
            raise ValueError(f"negative hint levels: {dict(list(bad.items())[:5])}")
        self.adaptive = bool(state.get("adaptive", True))
        self.levels = {k: v for k, v in levels.items() if v > 0}


def max_hint_level(n_segments: int, adaptive: bool = True) -> int:
    """The most segments a hint may show for a rationale of `n_segments` segments.

    Adaptive levels stop one short of the whole rationale, so a guided solution always
    holds at least one step the model wrote (a prompt whose rationale is one segment is
    never guided: 0); the fixed-hint ablation shows everything."""
    if n_segments < 0:
        raise ValueError(f"n_segments must be >= 0, got {n_segments}")
    return max(n_segments - 1, 0) if adaptive else n_segments


def hint_level_used(level: int, max_level: int, adaptive: bool = True) -> int:
    """Segments shown for stored level `level`: max(l, 1) clamped to the prompt's ceiling
    with adaptation; the ceiling (the whole rationale) without it."""
    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    return min(max(level, 1), max_level) if adaptive else max_level


def update_level(level: int, *, shown: int, solved: bool, guided_failed: bool,
                 max_level: int, adaptive: bool = True) -> int:  # fmt: skip
    """The level a prompt is guided at next time.

    `shown` is the deepest level this step tried (0: not guided). Solved (an unguided
    success, or an accepted guided response at `shown`) -> one less than what solved it,
    so the next visit tries a smaller hint (floor 0: guided only on failure); the guided
    round failed -> one more than was shown (cap `max_level`), so the next visit never
    repeats a hint that already failed; otherwise unchanged. Without adaptation the level
    never moves (fixed full hint)."""
    if level < 0 or shown < 0:
        raise ValueError(f"level={level} and shown={shown} must be >= 0")
    if not adaptive:
        return level
    if solved:
        return max((shown or level) - 1, 0)
    if guided_failed:
        return min(shown + 1, max_level)
    return level


# ----------------------------------------------------------------------------- trigger, hint


def _as_rows(rewards: Sequence[Sequence[float]] | Any, name: str) -> list[list[float]]:
    rows = rewards.tolist() if hasattr(rewards, "tolist") else [list(r) for r in rewards]
    if any(len(r) == 0 for r in rows):
        raise ValueError(f"{name} has a prompt without samples")
    return [[float(x) for x in r] for r in rows]


def needs_guidance(
    levels: Sequence[int],
    unguided_rewards: Sequence[Sequence[float]],
    cfg: Any,
    has_rationale: Sequence[bool] | None = None,
) -> list[bool]:
    """Which prompts get a guided round this step.

    levels (P,), unguided_rewards (P, G) (list of lists or a tensor). RGPO trigger
    ("level_or_fail"): level > 0 or max reward < success_threshold. Guide ("all_fail"):
    every unguided sample failed (max < threshold), whatever the level. Prompts without a
    rationale are never guided. Only guidance "rgpo" triggers here (GHPO escalates with
    `ghpo_escalate`).
    """
    rows = _as_rows(unguided_rewards, "unguided_rewards")
    if len(levels) != len(rows):
        raise ValueError(f"levels ({len(levels)}) and unguided_rewards ({len(rows)}) differ")
    if has_rationale is not None and len(has_rationale) != len(rows):
        raise ValueError(f"has_rationale ({len(has_rationale)}) and rewards ({len(rows)}) differ")
    if cfg.guidance != "rgpo":
        return [False] * len(rows)
    out = []
    for i, (lvl, r) in enumerate(zip(levels, rows)):
        failed = max(r) < cfg.success_threshold
        trig = failed if cfg.trigger == "all_fail" else (lvl > 0 or failed)
        out.append(trig and (has_rationale is None or bool(has_rationale[i])))
    return out


def build_hint(segments: Sequence[str], level: int) -> str:
    """The first max(level, 1) segments, concatenated (an exact prefix of the rationale)."""
    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    return "".join(segments[: max(level, 1)])


# ----------------------------------------------------------------------------- acceptance


def accept(
    guided_rewards: Sequence[float],
    unguided_rewards: Sequence[float],
    mode: str = "beat_all",
    success_threshold: float = 0.5,
) -> list[bool]:
    """beat_all: r_g > max(unguided), strictly (a tie is not an improvement);
    any_success (ablation): r_g >= success_threshold."""
    if len(unguided_rewards) == 0:
        raise ValueError("unguided_rewards is empty: acceptance needs the unguided group")
    g = [float(x) for x in guided_rewards]
    if mode == "beat_all":
        best = max(float(x) for x in unguided_rewards)
        return [r > best for r in g]
    if mode == "any_success":
        return [r >= success_threshold for r in g]
    raise ValueError(f"mode={mode!r} is invalid; valid: beat_all, any_success")


COPY_RULES = ("train", "once", "drop")


def is_copy(solution: str, rationale: str) -> bool:
    """Is `solution` the reference rationale itself? Equal once runs of whitespace are
    collapsed (a copy may end with or without a newline)."""
    return " ".join(solution.split()) == " ".join(rationale.split())


def transfer_copies(accepted: Sequence[bool], copies: Sequence[bool], rule: str) -> list[bool]:
    """Which accepted guided responses of one prompt are transferred, given which of them
    copy the reference: "train" all of them; "once" the responses of the model's own and
    one copy at most (K copies of one reference would weigh K times in the NLL); "drop"
    only the model's own."""
    if len(accepted) != len(copies):
        raise ValueError(f"accepted ({len(accepted)}) and copies ({len(copies)}) differ")
    if rule not in COPY_RULES:
        raise ValueError(f"copy rule {rule!r} is invalid; valid: {', '.join(COPY_RULES)}")
    out, kept_copy = [], False
    for ok, copy in zip(accepted, copies):
        keep = ok and (not copy or rule == "train" or (rule == "once" and not kept_copy))
        kept_copy |= keep and copy
        out.append(keep)
    return out


# ----------------------------------------------------------------------------- outcome


def step_outcome(
    unguided_rewards: Sequence[float],
    accepted: Sequence[bool] | None,
    success_threshold: float = 0.5,
) -> tuple[bool, bool]:
    """(solved, guided_failed) of one prompt for `update_level`.

    solved: an unguided success or an accepted guided response; guided_failed: a guided
    round ran (accepted is not None) and nothing was accepted."""
    unguided_success = max(float(r) for r in unguided_rewards) >= success_threshold
    any_accepted = bool(accepted) and any(accepted)
    solved = unguided_success or any_accepted
    guided_failed = accepted is not None and not any_accepted and not unguided_success
    return solved, guided_failed


# ----------------------------------------------------------------------------- GHPO


def ghpo_hint(rationale: str, omega: float) -> str:
    """GHPO's hint: the first ceil(omega * len) characters of the rationale."""
    if not 0.0 < omega <= 1.0:
        raise ValueError(f"omega must be in (0, 1], got {omega}")
    return rationale[: math.ceil(omega * len(rationale))]


def ghpo_escalate(
    group_rewards: Sequence[Sequence[float]],
    stages: Sequence[int | None],
    cfg: Any,
    has_rationale: Sequence[bool] | None = None,
) -> list[int | None]:
    """Next hint stage per prompt after a generation round.

    group_rewards (P, G) are the rewards of each prompt's current group, `stages` the
    stage that group was generated at (None = unguided, k = cfg.ghpo_omegas[k]). Returns
    the stage to regenerate at, or None = stop: a group with any success is final; an
    all-failed group escalates to the next omega; past the last omega it stops (the failed
    group is kept and its advantages are all zero).
    """
    rows = _as_rows(group_rewards, "group_rewards")
    if len(stages) != len(rows):
        raise ValueError(f"stages ({len(stages)}) and group_rewards ({len(rows)}) differ")
    out: list[int | None] = []
    for i, (r, s) in enumerate(zip(rows, stages)):
        all_failed = max(r) < cfg.success_threshold
        nxt = 0 if s is None else s + 1
        ok = has_rationale is None or bool(has_rationale[i])
        out.append(nxt if all_failed and ok and nxt < len(cfg.ghpo_omegas) else None)
    return out
