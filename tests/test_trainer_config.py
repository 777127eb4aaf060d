"""Config dataclasses, YAML presets, --algo and dotted overrides."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from rgpo_fast.trainer.cli import build_parser, parse_args
from rgpo_fast.trainer.config import SECTIONS, ConfigError, RunConfig, load_yaml, resolve

ROOT = Path(__file__).resolve().parents[1]


def test_every_field_has_help_and_a_flag():
    help_text = build_parser().format_help()
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{section}.{f.name} has no help"
            assert f"--{section}.{f.name}" in help_text
    for flag in ("--config", "--algo", "--model", "--data", "--output-dir", "--max-steps",
                 "--seed", "--resume", "--debug"):
        assert flag in help_text


def test_defaults_are_the_builtin_run():
    _, cfg = parse_args([])
    assert cfg.algo.name == "rgpo" and cfg.algo.guidance == "rgpo"
    assert cfg.model.path is None and cfg.data.train == "countdown:mixed"
    assert cfg.data.sft == "countdown:warm" and cfg.train.output_dir.startswith("runs/")
    # the default run's RGPO continues a partial solution placed in the response
    assert (cfg.algo.hint_placement, cfg.algo.transferred_hint) == ("response", "trained")
    # a named preset keeps its own defaults; fields given without a name stay on top
    _, named = parse_args(["--algo", "rgpo"])
    assert (named.algo.hint_placement, named.algo.sft_coef) == ("prompt", 1e-3)
    _, tuned = parse_args(["--algo.n_segments", "3"])
    assert tuned.algo.n_segments == 3 and tuned.algo.hint_placement == "response"


def test_overrides_shortcuts_and_algo(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"rollout": {"n": 4}, "algo": {"sft_coef": 0.01},
                                        "train": {"max_steps": 7}}))
    _, cfg = parse_args(["--config", str(cfg_file), "--algo", "guide", "--rollout.n", "8",
                         "--max-steps", "3", "--seed", "5", "--algo.clip_high", "0.3",
                         "--resume", "--data", "x.jsonl"])
    assert cfg.rollout.n == 8 and cfg.train.max_steps == 3 and cfg.train.seed == 5
    assert cfg.algo.name == "guide" and cfg.algo.transfer == "is"  # the preset
    assert cfg.algo.sft_coef == 0.01 and cfg.algo.clip_high == 0.3  # file + flag on top
    assert cfg.train.resume and cfg.data.train == "x.jsonl"
    _, cfg = parse_args(["--algo.ghpo_omegas", "0.5,1.0", "--model.path", "none"])
    assert cfg.algo.ghpo_omegas == (0.5, 1.0) and cfg.model.path is None


def test_saved_config_round_trips(tmp_path):
    _, cfg = parse_args(["--algo", "dapo", "--rollout.top_p", "0.9"])
    cfg.save(tmp_path / "config.yaml")
    again = resolve(load_yaml(tmp_path / "config.yaml"), None, {})  # what export does
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("argv, culprit", [
    (["--rollout.n", "0"], "rollout.n"),
    (["--rollout.n", "two"], "rollout.n"),
    (["--algo", "ppo2"], "ppo2"),
    (["--rollout.engine", "sglang"], "rollout.engine"),
    (["--algo.loss_agg", "mean"], "loss_agg"),
    (["--train.sft_hint_prob", "2"], "train.sft_hint_prob"),
    (["--logging.progress", "maybe"], "logging.progress"),
    (["--train.ppo_epochs", "0"], "train.ppo_epochs"),
    (["--algo.objective", "ppo3"], "objective='ppo3' is unknown; valid: cispo, gspo, ppo"),
    (["--algo.rollout_correction", "seq"], "rollout_correction='seq' is unknown"),
    (["--train.mini_batches", "99"], "train.mini_batches"),
    (["--no-such-flag"], "--no-such-flag"),
])
def test_bad_values_name_the_field(argv, culprit):
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")):
        parse_args(argv)


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout:\n  n: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML.*bad.yaml"):
        parse_args(["--config", str(bad)])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("rollout:\n  samples: 4\n")
    with pytest.raises(ConfigError, match=r"unknown config key rollout\.samples"):
        parse_args(["--config", str(unknown)])
    section = tmp_path / "section.yaml"
    section.write_text("optimizer:\n  lr: 1.0\n")
    with pytest.raises(ConfigError, match="unknown config section 'optimizer'"):
        parse_args(["--config", str(section)])
    with pytest.raises(ConfigError, match="config file not found"):
        parse_args(["--config", str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_presets_resolve(name):
    _, cfg = parse_args(["--config", str(ROOT / "configs" / name)])
    assert isinstance(cfg, RunConfig)


def test_tiny_preset_equals_defaults():
    _, from_file = parse_args(["--config", str(ROOT / "configs" / "tiny_cpu.yaml")])
    _, defaults = parse_args([])
    assert from_file.to_dict() == defaults.to_dict()
