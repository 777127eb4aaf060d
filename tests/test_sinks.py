"""Metrics sinks (`logging.report_to`): TensorBoard event files and an offline W&B run get
the rows of metrics.jsonl with the same keys; names are checked; a missing package is one
error line."""

import json
import sys

import pytest

from rgpo_fast.train import main
from rgpo_fast.trainer.config import ConfigError, LoggingConfig
from rgpo_fast.trainer.sinks import numbers, parse_report_to, wandb_mode
from rgpo_fast.trainer.testing import tiny_args


def test_report_to_names_are_checked():
    assert parse_report_to("jsonl, tensorboard,wandb,jsonl") == ("jsonl", "tensorboard", "wandb")
    for bad in ("tensorbord", "", "jsonl,mlflow"):
        with pytest.raises(ConfigError, match="logging.report_to=.*valid: a comma-separated"):
            LoggingConfig(report_to=bad)


def test_numbers_keep_the_numeric_entries():
    assert numbers({"step": 3, "a": 1, "b": 0.5, "ok": True, "s": "x"}) == {"a": 1.0, "b": 0.5}


def test_wandb_mode(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode() == "offline"  # no key: works with no network
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_tensorboard_and_offline_wandb_get_the_jsonl_rows(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main(tiny_args(out, tmp_path / "cache", steps=2, extra=[
        "--logging.report_to", "jsonl,tensorboard,wandb", "--logging.plots", "false"])) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert set(numbers(rows[0])) <= tags  # every key of metrics.jsonl
    for key in ("reward/mean", "loss/total", "grad_norm", "tokens/generated"):
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert got == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows], key
    assert "summary/eval/easy_accuracy" in tags
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    blob = runs[0].read_bytes()
    for key in ("reward/mean", "grad_norm", "eval/easy_accuracy"):  # logged keys, summary
        assert key.encode() in blob, key


def test_missing_sink_package_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    code = main(tiny_args(tmp_path / "run", tmp_path / "cache",
                          extra=["--logging.report_to", "wandb"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install wandb" in err[0]
