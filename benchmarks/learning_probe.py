"""Learning benchmark: the hint probe (does the warm start use partial rationales?)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from learning_settings import DRIVER, ROOT, Settings


def hint_probe_worker(model_dir: Path, s: Settings, n: int = 128, k: int = 8) -> None:
    """Does the warm-started model use hints? Success on `n` hard training problems without a
    hint and with the first 1..N rationale segments in the prompt (RGPO's guided prompt),
    k samples each at temperature 1. Written to <model_dir>/hint_probe.json."""
    import torch

    from rgpo_fast.algos import guidance
    from rgpo_fast.algos.presets import get_preset
    from rgpo_fast.data.arith import make_arith
    from rgpo_fast.data.prompts import encode_prompt, token_starts
    from rgpo_fast.rewards import get_reward_fn
    from rgpo_fast.rollout.base import SamplingParams
    from rgpo_fast.rollout.hf import HFEngine
    from rgpo_fast.train import quiet_libraries
    from rgpo_fast.trainer.tiny_model import load_model_and_tokenizer

    quiet_libraries()
    torch.set_num_threads(1)
    lm, tok = load_model_and_tokenizer(model_dir)
    engine = HFEngine(lm, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    reward, algo = get_reward_fn("exact"), get_preset("rgpo")
    examples = make_arith(s.warm_seed, n, "hard")
    out = []
    for level in range(algo.n_segments + 1):
        prompts = [encode_prompt(tok, ex.problem, guidance.build_hint(guidance.segment_rationale(
            ex.rationale, algo.n_segments, algo.segmentation, token_starts(tok)), level)
            if level else None, hint_template=algo.hint_template) for ex in examples]
        gens = engine.generate(prompts, SamplingParams(n=k, max_new_tokens=s.max_new_tokens,
                                                       temperature=1.0, seed=1))
        ok = [[reward(tok.decode(c.token_ids, skip_special_tokens=True), ex.answer) >= 0.5
               for c in g.completions] for ex, g in zip(examples, gens)]
        out.append({"level": level, "sample_success": sum(map(sum, ok)) / (n * k),
                    f"pass@{k}": sum(any(r) for r in ok) / n})
    (model_dir / "hint_probe.json").write_text(json.dumps(out, indent=2))


def hint_probe(model_dir: Path, s: Settings) -> list[dict]:
    """The probe of `model_dir` (run once in its own process, then read from its file)."""
    f = model_dir / "hint_probe.json"
    if not f.exists():
        subprocess.run([sys.executable, str(DRIVER), "--probe-worker", str(model_dir),
                        "--settings-json", json.dumps(dataclasses.asdict(s))], check=True, cwd=ROOT)
    return json.loads(f.read_text())
