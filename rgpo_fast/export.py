"""Export a checkpoint of a run as a Hugging Face model directory.

    python -m rgpo_fast.export runs/default                  # the newest checkpoint
    python -m rgpo_fast.export runs/default --step 50 --out my_model

Reads the run's config.yaml to find its base model and tokenizer (the built-in tiny model
is rebuilt from its spec, bit-identical), loads `checkpoints/step_<n>/model.pt` (checksums
verified) and writes `config.json`, `model.safetensors` and the tokenizer to `--out`
(default `<run>/hf/step_<n>`), loadable by `AutoModelForCausalLM` / `AutoTokenizer` and
servable by vLLM (rgpo_fast/trainer/hf_export.py). `--out` must be absent or empty, or an
earlier export with `--overwrite`: nothing else is ever replaced. Bad input: exit 2 and one
`error:` line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rgpo_fast.errors import UserError


def export(run: Path, step: int | None = None, out: Path | None = None,
           dtype: str = "float32", overwrite: bool = False) -> Path:
    import torch
    from transformers import AutoConfig, GenerationConfig

    from rgpo_fast.trainer import checkpoint as ckpt
    from rgpo_fast.trainer import run_dir
    from rgpo_fast.trainer.build import resolve_model_dir
    from rgpo_fast.trainer.config import load_yaml, resolve
    from rgpo_fast.trainer.hf_export import check_target, hf_state_dict, write_hf_dir
    from rgpo_fast.trainer.tiny_model import load_text_processor

    cfg_file = run / "config.yaml"
    if not cfg_file.is_file():
        raise UserError(f"{run} is not a run directory: it has no config.yaml")
    steps = dict(ckpt.list_checkpoints(run / "checkpoints"))
    if not steps:
        raise UserError(f"{run} has no checkpoints (checkpoints/step_<n>)")
    step = max(steps) if step is None else step
    if step not in steps:
        raise UserError(f"{run} has no checkpoint of step {step}; it has steps "
                        f"{', '.join(map(str, sorted(steps)))}")
    try:
        ckpt.verify(steps[step])
    except ckpt.CheckpointError as e:
        raise UserError(f"checkpoint {steps[step]} is unusable: {e}") from None
    out = out or run / "hf" / f"step_{step:06d}"
    check_target(out, overwrite)  # before minutes of loading
    cfg = resolve(load_yaml(cfg_file), None, {})
    base = resolve_model_dir(cfg)
    # The base model's config and tokenizer only: its weights are replaced by the checkpoint's.
    try:
        generation = GenerationConfig.from_pretrained(str(base))
    except OSError:  # no generation_config.json: the model's defaults
        generation = None
    print(f"exporting {steps[step]} to {out}", flush=True)
    state = torch.load(steps[step] / "model.pt", map_location="cpu", weights_only=True)
    with run_dir.writing(f"the model to {out}"):  # OSError -> one error line
        return write_hf_dir(AutoConfig.from_pretrained(str(base)), generation,
                            load_text_processor(base), hf_state_dict(state), out,
                            dtype=getattr(torch, dtype), overwrite=overwrite,
                            source={"run": str(run), "step": step})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rgpo_fast.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run directory (with config.yaml, checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.add_argument("--out", type=Path, default=None, help="output directory")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export at --out (never anything else)")
    a = p.parse_args(argv)
    from rgpo_fast.trainer.progress import quiet_libraries

    quiet_libraries()  # our lines only, as in the trainer: no per-file bars in a log
    try:
        out = export(a.run, a.step, a.out, a.dtype, a.overwrite)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (AutoModelForCausalLM / AutoTokenizer.from_pretrained)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
