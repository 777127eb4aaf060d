"""Learning benchmark: the hint probe of the warm start (rgpo_fast/probe.py) on held-out
hard problems: does the model use partial solutions, and are its successes its own?"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from learning_settings import DRIVER, ROOT, Settings

PROBE_N = 256  # held-out hard problems
PROBE_K = 8  # samples per problem and hint level


def hint_probe_worker(model_dir: Path, s: Settings) -> None:
    """Success, pass@k and copy share per hint level, written to <model_dir>/hint_probe.json
    (RGPO's levels: one per solution step, never the whole solution; its placement,
    temperature 1)."""
    import torch

    from rgpo_fast.algos.presets import get_preset
    from rgpo_fast.data.tasks import task_of
    from rgpo_fast.probe import run_probe
    from rgpo_fast.rewards import get_reward_fn
    from rgpo_fast.rollout.hf import HFEngine
    from rgpo_fast.trainer.data_sources import eval_sources, load_source
    from rgpo_fast.trainer.progress import quiet_libraries
    from rgpo_fast.trainer.tiny_model import load_model_and_tokenizer

    quiet_libraries()
    torch.set_num_threads(s.warm_threads)
    lm, tok = load_model_and_tokenizer(model_dir)
    engine = HFEngine(lm, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    hard = dict(eval_sources(s.eval_data))["hard"]
    examples = load_source(hard, n=PROBE_N, seed=0, heldout=True)
    algo = get_preset("rgpo", hint_placement=s.hint_placement)
    res = run_probe(engine, tok, examples, get_reward_fn(task_of(hard).reward), algo,
                    k=PROBE_K, max_new_tokens=s.max_new_tokens)  # fmt: skip
    rows = [{"level": r.level, "sample_success": r.success, f"pass@{PROBE_K}": r.pass_at_k,
             "copy_share": r.copy} for r in res]  # fmt: skip
    (model_dir / "hint_probe.json").write_text(json.dumps(rows, indent=2))


def hint_probe(model_dir: Path, s: Settings) -> list[dict]:
    """The probe of `model_dir` (run once in its own process, then read from its file)."""
    f = model_dir / "hint_probe.json"
    if not f.exists():
        subprocess.run([sys.executable, str(DRIVER), "--probe-worker", str(model_dir),
                        "--settings-json", json.dumps(dataclasses.asdict(s))], check=True, cwd=ROOT)
    return json.loads(f.read_text())
