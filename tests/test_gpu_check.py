"""benchmarks/gpu_check.py as far as a CPU can run it: the no-GPU exit, its argument
errors, its RL command (run here with the hf engine) and the parsing of what each stage
writes."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

from rgpo_fast.train import main as train_main  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_without_gpu_one_line_and_exit_0(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out",
                           str(tmp_path / "s.json")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0]
    assert not (tmp_path / "s.json").exists()


def test_unknown_stage_is_an_error(capsys):
    assert gpu_check.main(["--stages", "tests,warp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "warp" in err[0]


def test_rl_stage_command_runs_with_the_hf_engine(tmp_path):
    """The RL stage's flags are valid trainer flags; its outputs parse into the summary."""
    run_dir = tmp_path / "run"
    cmd = gpu_check.rl_command(run_dir, engine="hf", steps=1)
    assert cmd[1:3] == ["-m", "rgpo_fast.train"]
    small = ["--train.sft_steps", "2", "--data.n_eval", "4", "--train.prompts_per_step", "2",
             "--rollout.n", "2", "--rollout.max_new_tokens", "8", "--model.tiny_layers", "1",
             "--model.tiny_hidden", "32", "--model.tiny_heads", "2", "--model.tiny_kv_heads",
             "1", "--train.threads", "1"]  # fmt: skip
    assert train_main(cmd[3:] + small) == 0
    figures = gpu_check.rl_summary(run_dir)
    assert [r["step"] for r in figures["steps"]] == [1]
    assert figures["eval_before"] and figures["eval_after"]


def test_junit_and_bench_parsing(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite><testcase classname="t" name="a"/>'
        '<testcase classname="t" name="b"><failure message="x"/></testcase>'
        '<testcase classname="t" name="c"><skipped/></testcase></testsuite></testsuites>'
    )
    assert gpu_check.junit_counts(xml) == {"passed": 1, "failed": 1, "skipped": 1,
                                           "failures": ["t::b"]}  # fmt: skip
    rows = [{"N": "8", "H": "4", "V": "16", "mode": "full", "provider": p, "ms": ms,
             "peak_mb": mb} for p, ms, mb in [("floor", "1.0", "0"), ("naive", "3.0", "100"),
                                               ("liger", "2.0", "20"), ("triton", "1.5", "10")]]
    out = {r["provider"]: r for r in gpu_check.bench_summary(rows)}
    assert out["triton"]["time_over_floor"] == 1.5
    assert out["triton"]["memory_over_naive"] == 0.1 and out["triton"]["memory_over_liger"] == 0.5
    assert out["floor"]["memory_over_naive"] is None
    text = gpu_check.format_summary({"date": "d", "stages": {
        "bench": {"status": "ok", "seconds": 1.0, "figures": {"rows": list(out.values())}}}})
    assert "time/floor 1.5" in text
