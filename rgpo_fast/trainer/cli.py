"""Command line of `python -m rgpo_fast.train`: shortcut flags plus one `--section.field`
flag per config field (generated from the dataclasses, so `--help` lists everything)."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from typing import Any

from rgpo_fast.algos.presets import preset_names
from rgpo_fast.trainer.config import SECTIONS, ConfigError, RunConfig, load_yaml, resolve

# Shortcut flag -> (section, field)
SHORTCUTS = {
    "model": ("model", "path"),
    "data": ("data", "train"),
    "output_dir": ("train", "output_dir"),
    "max_steps": ("train", "max_steps"),
    "seed": ("train", "seed"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage + exiting (we print one line)."""

    def error(self, message: str):
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m rgpo_fast.train",
        description="RL trainer for LLM reasoning (RGPO and neighbours). With no arguments: "
        "the built-in tiny CPU run (tiny Qwen2, SFT warm start on countdown:warm, RGPO on "
        "countdown:mixed). Dotted flags override any config field, e.g. --rollout.n 8.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("common")
    g.add_argument("--config", help="YAML preset (see configs/)")
    g.add_argument("--algo", help=f"algorithm preset: {', '.join(preset_names())}")
    g.add_argument("--model", help="HF model directory (default: built-in tiny model)")
    g.add_argument("--data", help="training data: countdown:<split>, arith:<split> or a "
                   ".jsonl/.json/.parquet/.csv file")
    g.add_argument("--output-dir", dest="output_dir", help="run directory")
    g.add_argument("--max-steps", dest="max_steps", help="RL steps")
    g.add_argument("--seed", help="random seed")
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    g.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    defaults = RunConfig()
    for section, cls in SECTIONS.items():
        grp = p.add_argument_group(f"{section} ({cls.__name__})")
        for f in dataclasses.fields(cls):
            default = getattr(getattr(defaults, section), f.name)
            grp.add_argument(
                f"--{section}.{f.name}", dest=f"{section}.{f.name}", metavar="V",
                default=argparse.SUPPRESS,
                help=f"{f.metadata.get('help', '')} (default: {default!r})".replace("%", "%%"))
    return p


_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _attach_negative_numbers(argv: list[str]) -> list[str]:
    """`--optim.eps -1e-8` -> `--optim.eps=-1e-8`. argparse takes only plain negative
    numbers (-1, -0.5) as values; with an exponent it reads an option and reports "expected
    one argument" instead of the range check's message."""
    out: list[str] = []
    for arg in argv:
        if (_NUMBER.match(arg) and "e" in arg.lower() and out and out[-1].startswith("--")
                and "=" not in out[-1]):  # fmt: skip
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, RunConfig]:
    """Parse argv into (namespace, resolved RunConfig); ConfigError on any problem."""
    parser = build_parser()
    ns = parser.parse_args(_attach_negative_numbers(sys.argv[1:] if argv is None else argv))
    file_values = load_yaml(ns.config) if ns.config else {}
    overrides: dict[str, dict[str, Any]] = {}
    for flag, (section, name) in SHORTCUTS.items():
        value = getattr(ns, flag, None)
        if value is not None:
            overrides.setdefault(section, {})[name] = value
    if ns.resume:
        overrides.setdefault("train", {})["resume"] = True
    for key, value in vars(ns).items():
        if "." in key:
            section, name = key.split(".", 1)
            overrides.setdefault(section, {})[name] = value
    cfg = resolve(file_values, ns.algo, overrides)
    return ns, cfg
