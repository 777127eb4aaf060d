"""Hint probe: does a model use partial rationales? (RGPO's precondition, checked first.)

    python -m rgpo_fast.probe --model DIR --data countdown:hard
    python -m rgpo_fast.probe --model DIR --data problems.jsonl --n 128 --k 8 --json out.json

For each hint level L = 0 .. the highest partial level (L = 0: no hint), the `--n` problems
whose rationale has more than L segments are prompted with its first L segments as RGPO's
guided round builds them (same segmentation, ceiling and template: by default one segment
per step of the rationale, never all of them; the hint in the user message, or with
`--placement response` as the start of the response, which the model continues) and
sampled `--k` times. Per level it reports

    success   the share of the n*k samples the verifier accepts
    pass@k    the share of problems with at least one accepted sample
    copy      the share of accepted samples whose text equals the reference rationale

RGPO can only help where partial levels (0 < L < N) succeed clearly more often than L = 0
while most of their successes are not copies of the reference: then the guided samples it
transfers are the model's own solutions (docs/rgpo.md, "Check the precondition first").
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from rgpo_fast.errors import UserError


@dataclass
class LevelResult:
    level: int  # rationale segments shown (0 = none)
    problems: int  # problems whose rationale has a partial hint of this level
    samples: int
    success: float  # accepted samples / samples
    pass_at_k: float  # problems with an accepted sample / problems
    copy: float  # accepted samples equal to the reference / accepted samples (0 if none)


def level_result(level: int, accepted: list[list[bool]], copies: list[list[bool]]
                 ) -> LevelResult:  # fmt: skip
    """Counts of one level from per-problem lists of per-sample flags (accepted, and
    equal to the reference)."""
    n = len(accepted)
    samples = sum(len(a) for a in accepted)
    ok = sum(sum(a) for a in accepted)
    copied = sum(c and a for acc, cop in zip(accepted, copies) for a, c in zip(acc, cop))
    return LevelResult(level=level, problems=n, samples=samples,
                       success=ok / samples if samples else 0.0,
                       pass_at_k=sum(any(a) for a in accepted) / n if n else 0.0,
                       copy=copied / ok if ok else 0.0)  # fmt: skip


def run_probe(engine, tokenizer, examples, reward_fn, algo, *, k: int, max_new_tokens: int,
              temperature: float = 1.0, seed: int = 0, system: str | None = None,
              processor=None) -> list[LevelResult]:  # fmt: skip
    """Levels 0 .. the highest partial level on `examples` (each must have a rationale),
    level L on the problems that have it (`guidance.max_hint_level`), with the hint placed
    as `algo.hint_placement` says. Problems with images show them at every level
    (`processor`: the vision-language model's)."""
    from rgpo_fast.algos import guidance
    from rgpo_fast.data.multimodal import PromptEncoder
    from rgpo_fast.guided_round import place_hint, rationale_segments
    from rgpo_fast.rollout.base import SamplingParams, with_images

    encoder = PromptEncoder(tokenizer, processor, system=system, hint_template=algo.hint_template)
    vision = {id(ex): encoder.vision(ex.images, f"problem {ex.uid}") for ex in examples}
    segments = [rationale_segments(ex.rationale, algo, tokenizer) for ex in examples]
    ceilings = [guidance.max_hint_level(len(segs), algo.adaptive_levels) for segs in segments]
    results = []
    for level in range(max(ceilings, default=0) + 1):
        chosen = [i for i, c in enumerate(ceilings) if c >= level]
        cases = [(examples[i], guidance.build_hint(segments[i], level) if level else "")
                 for i in chosen]  # fmt: skip
        prompts, prefixes = [], []
        for ex, hint in cases:
            v = vision[id(ex)]
            ids, prefix = place_hint(encoder.encode(ex.problem, vision=v), hint, algo, tokenizer,
                                     lambda h, ex=ex, v=v: encoder.encode(ex.problem, h, v))
            prompts.append(ids)
            prefixes.append(prefix)
        params = SamplingParams(n=k, max_new_tokens=max_new_tokens, temperature=temperature,
                                seed=seed + level)  # fmt: skip
        outs = engine.generate(prompts, params,
                               **with_images([vision[id(ex)] for ex, _ in cases]))
        accepted, copies = [], []
        for (ex, _), prefix, out in zip(cases, prefixes, outs):
            texts = [tokenizer.decode(prefix + list(c.token_ids), skip_special_tokens=True)
                     for c in out.completions]  # fmt: skip
            accepted.append([reward_fn(t, ex.answer) >= algo.success_threshold for t in texts])
            copies.append([guidance.is_copy(t, ex.rationale) for t in texts])
        results.append(level_result(level, accepted, copies))
    return results


def table(results: list[LevelResult], k: int) -> str:
    lines = [f"{'level':>5}  {'success %':>9}  {f'pass@{k} %':>9}  {'copy %':>6}"]
    for r in results:
        lines.append(f"{r.level:>5}  {100 * r.success:9.1f}  {100 * r.pass_at_k:9.1f}  "
                     f"{100 * r.copy:6.1f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rgpo_fast.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF model directory")
    p.add_argument("--data", required=True,
                   help="<task>:<split> or a .jsonl/.json/.parquet/.csv file with problem, "
                        "answer and rationale columns")  # fmt: skip
    p.add_argument("--n", type=int, default=256, help="problems (with a rationale) to probe")
    p.add_argument("--k", type=int, default=8, help="samples per problem and level")
    p.add_argument("--segments", type=int, default=None,
                   help="group the rationale into at most this many segments (default: its "
                        "own steps, as algo.n_segments unset)")  # fmt: skip
    p.add_argument("--segmentation", default="auto",
                   help="auto, lines, sentences, steps or tokens")  # fmt: skip
    p.add_argument("--placement", default="prompt", choices=("prompt", "response"),
                   help="hint in the user message, or as the start of the response")
    p.add_argument("--reward", default="auto", help="verifier (auto: the task's own)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--heldout", action="store_true",
                   help="built-in tasks: the held-out partition (default: training problems, "
                        "where RGPO guides)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--json", default=None, help="also write the results to this file")
    a = p.parse_args(argv)
    try:
        results = _probe(a)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(results, a.k))
    if a.json:
        Path(a.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


def _probe(a) -> list[LevelResult]:
    from rgpo_fast.algos.presets import get_preset
    from rgpo_fast.data.multimodal import load_processor, refuse_images
    from rgpo_fast.rewards import REWARDS, get_reward_fn
    from rgpo_fast.trainer.config import ConfigError
    from rgpo_fast.trainer.data_sources import load_source, resolve_reward
    from rgpo_fast.trainer.tiny_model import is_vision_language, load_model_and_tokenizer

    for name in ("n", "k", "max_new_tokens"):
        if getattr(a, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if not a.temperature > 0:
        raise ConfigError(f"--temperature must be > 0, got {a.temperature}")
    model_dir = Path(a.model)
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"--model {a.model} is not a HF model directory (no config.json)")
    try:
        algo = get_preset("rgpo", n_segments=a.segments, segmentation=a.segmentation,
                          hint_placement=a.placement)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    reward = resolve_reward(a.reward, a.data)
    if reward not in REWARDS:
        raise ConfigError(f"--reward {reward!r} is unknown; valid: auto, "
                          f"{', '.join(REWARDS.names())}")  # fmt: skip
    lm, tok = load_model_and_tokenizer(model_dir)
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lm.to(device)
    examples = load_source(a.data, n=max(a.n * 4, 64), seed=a.seed, heldout=a.heldout,
                           tokenizer=tok, limit=None)  # fmt: skip
    with_rationale = [ex for ex in examples if ex.rationale.strip()]
    if not with_rationale:
        raise ConfigError(f"{a.data} has no problem with a rationale: nothing to probe")
    examples = with_rationale[: a.n]
    processor = load_processor(model_dir) if is_vision_language(model_dir) else None
    if processor is None:
        refuse_images({a.data: examples}, model_dir)
    from rgpo_fast.rollout.hf import HFEngine

    engine = HFEngine(lm, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    return run_probe(engine, tok, examples, get_reward_fn(reward), algo, k=a.k,
                     max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                     seed=a.seed, system=a.system, processor=processor)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
