"""Start-up checks that run before any model reaches a GPU: sequence length against the
model's positions, tensor parallelism, the torch / vLLM versions. Each failure is one
`error:` line with the numbers and the options to change."""

import json
from pathlib import Path

import pytest

from rgpo_fast.train import main
from rgpo_fast.trainer.config import ConfigError, load_yaml, resolve
from rgpo_fast.trainer.preflight import check_sequence_lengths, required_model_len
from rgpo_fast.trainer.testing import tiny_args
from rgpo_fast.versions import TESTED, VersionError, check_gpu_stack, torch_pin_of

ROOT = Path(__file__).resolve().parents[1]


def _model_dir(tmp_path, positions):
    d = tmp_path / f"m{positions}"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "qwen2",
                                               "max_position_embeddings": positions}))
    return d


def _cfg(**sections):
    return resolve({}, None, sections)


def test_rollouts_must_fit_the_model_positions(tmp_path):
    cfg = _cfg(data={"max_prompt_tokens": 1024}, rollout={"max_new_tokens": 3072})
    assert required_model_len(cfg) == 1024 + 512 + 3072  # rgpo hints: hint room counts
    with pytest.raises(ConfigError) as e:
        check_sequence_lengths(cfg, _model_dir(tmp_path, 4096))
    msg = str(e.value)
    assert "4608" in msg and "4096" in msg and "rollout.max_new_tokens" in msg
    grpo = resolve({}, "grpo", {"data": {"max_prompt_tokens": 1024},
                                "rollout": {"max_new_tokens": 3072}})
    assert check_sequence_lengths(grpo, _model_dir(tmp_path, 4100)) == 4096  # no hints


def test_vllm_max_model_len_bounds(tmp_path):
    base = {"engine": "vllm", "max_new_tokens": 100}
    short = _cfg(data={"max_prompt_tokens": 100}, rollout={**base, "vllm_max_model_len": 300})
    with pytest.raises(ConfigError, match="shorter than the longest rollout"):
        check_sequence_lengths(short, _model_dir(tmp_path, 4096))
    long = _cfg(data={"max_prompt_tokens": 100}, rollout={**base, "vllm_max_model_len": 5000})
    with pytest.raises(ConfigError, match="5000 exceeds max_position_embeddings=4096"):
        check_sequence_lengths(long, _model_dir(tmp_path, 4096))
    ok = _cfg(data={"max_prompt_tokens": 100}, rollout={**base, "vllm_max_model_len": 1024})
    assert check_sequence_lengths(ok, _model_dir(tmp_path, 2048)) == 1024


def test_shipped_gpu_recipe_fits_its_model():
    """configs/qwen2.5-math-1.5b_8gpu.yaml within Qwen2.5-Math-1.5B's 4096 positions."""
    cfg = resolve(load_yaml(ROOT / "configs" / "qwen2.5-math-1.5b_8gpu.yaml"), None, {})
    assert required_model_len(cfg) <= 4096


def test_tensor_parallel_above_one_is_refused():
    with pytest.raises(ConfigError, match="tensor_parallel_size=2 is not supported"):
        _cfg(rollout={"tensor_parallel_size": 2})


def test_cli_length_error_before_loading(tmp_path, capsys):
    """The tiny model has 2048 positions: asking for more is one error line, exit 2."""
    args = tiny_args(tmp_path / "run", tmp_path / "cache",
                     extra=["--rollout.max_new_tokens", "1800"])  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: rollouts need")
    assert "max_position_embeddings=2048" in err[0]


VLLM_REQ = ["torch==2.14.0", "transformers<5.21,>=5.16.1",
            'triton==3.6.0; platform_machine == "x86_64"']


def test_version_checks():
    assert torch_pin_of(VLLM_REQ) == "2.14.0"
    check_gpu_stack("2.14.0+cu128", "0.33.0", VLLM_REQ)  # a local build tag is the same torch
    with pytest.raises(VersionError, match="built for torch 2.14.0 but torch 2.15.0"):
        check_gpu_stack("2.15.0", "0.33.0", VLLM_REQ)
    with pytest.raises(VersionError, match="make install-gpu"):
        check_gpu_stack("2.14.0", "0.9.2", VLLM_REQ)
    with pytest.raises(VersionError, match="older than 2.11"):
        check_gpu_stack("2.10.0", "0.33.0", VLLM_REQ)
    makefile = (ROOT / "Makefile").read_text()  # install-gpu installs the tested pair
    assert f"torch=={TESTED['torch']}" in makefile and f"vllm=={TESTED['vllm']}" in makefile


def test_vllm_engine_without_vllm_is_one_error_line(tmp_path, capsys):
    """Here (no GPU) rollout.engine=vllm fails at start-up with one line, nothing loaded."""
    args = tiny_args(tmp_path / "run", tmp_path / "cache", extra=["--rollout.engine", "vllm"])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "vllm" in err[0]


def test_flash_attn_built_for_another_torch_is_named(monkeypatch):
    """An installed flash-attn whose extension does not load (built against another torch)
    is reported as such, not as missing."""
    import builtins

    from rgpo_fast.trainer import build

    real_import = builtins.__import__

    def failing(name, *a, **kw):
        if name.startswith("flash_attn"):
            raise ImportError("flash_attn_2_cuda.so: undefined symbol: _ZN3c10...")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(build, "_installed", lambda mod: True)
    monkeypatch.setattr(builtins, "__import__", failing)
    msg = build.flash_attn_problem()
    assert "does not load" in msg and "undefined symbol" in msg and "make install-flash-attn" in msg


def test_flash_attention_requested_without_it_is_one_error_line(tmp_path, capsys):
    args = tiny_args(tmp_path / "run", tmp_path / "cache",
                     extra=["--model.attn_implementation", "flash_attention_2"])  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "flash_attention_2" in err[0] and "not installed" in err[0]


@pytest.mark.parametrize("extra, culprit", [
    (["--algo.clip_ratio_c", "3"], "algo.clip_ratio_c=3.0 never acts"),
    (["--algo.tis_cap", "5"], "algo.tis_cap=5.0 never acts"),
    (["--algo.rollout_correction", "seq_mask"], "algo.rollout_correction=seq_mask never acts"),
    (["--algo.objective", "sapo", "--algo.clip_high", "0.28"],
     "algo.clip_high=0.28 is never read with algo.objective=sapo"),
    (["--algo.sapo_tau_neg", "2"], "algo.sapo_tau_neg=2.0 is never read with algo.objective=ppo"),
    (["--algo.token_mask_high", "3"],
     "algo.token_mask_high=3.0 is never read with algo.rollout_correction=token"),
    (["--rollout.top_p", "0.8", "--train.impl", "cuda"],
     "train.impl=cuda has no kernels for the log-probs of a top-k / top-p sampler"),
])
def test_loss_options_that_cannot_act_are_refused(tmp_path, capsys, extra, culprit):
    assert main(tiny_args(tmp_path / "run", tmp_path / "cache", extra=extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and culprit in err[0]


@pytest.mark.parametrize("overrides", [
    {"algo": {"clip_ratio_c": 3.0}, "train": {"ppo_epochs": 2}},  # several updates: it acts
    # `is` transfers: the ratio and the importance weight are to the hinted context
    {"algo": {"clip_ratio_c": 3.0, "transfer": "is", "transferred_hint": "masked"}},
    {"algo": {"tis_cap": 5.0, "transfer": "is", "transferred_hint": "masked"}},
    {"algo": {"tis_cap": None}},  # off is off
    {"algo": {"objective": "sapo", "sapo_tau_pos": 0.5, "sapo_tau_neg": 2.0}},
    {"algo": {"rollout_correction": "token_mask", "token_mask_low": 0.8, "transfer": "is",
              "transferred_hint": "masked"}},
    {"rollout": {"top_p": 0.8, "top_k": 20}},  # impl auto: a backend with the thresholds
])
def test_loss_options_that_can_act_are_accepted(overrides):
    from rgpo_fast.trainer.preflight import check_loss_options

    check_loss_options(_cfg(**overrides))


def _vl_model_dir(tmp_path, positions=128000):
    """A Qwen2.5-VL-3B-Instruct directory as the start-up checks read it: its config's
    positions and its image processor's pixel range (the released values)."""
    d = tmp_path / "qwen2.5-vl"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({
        "model_type": "qwen2_5_vl", "image_token_id": 151655,
        "vision_config": {"spatial_merge_size": 2, "patch_size": 14},
        "text_config": {"max_position_embeddings": positions}}))
    (d / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 3136,
        "max_pixels": 12845056, "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}))
    return d


def test_shipped_vision_language_recipe_passes_the_start_up_checks(tmp_path):
    """configs/qwen2.5-vl-3b_8gpu.yaml: rollouts within the model's positions, a prompt limit
    that holds images (their tokens count), the field mapping of its data."""
    from rgpo_fast.trainer.preflight import check_image_budget, image_token_range

    cfg = resolve(load_yaml(ROOT / "configs" / "qwen2.5-vl-3b_8gpu.yaml"), None, {})
    model = _vl_model_dir(tmp_path)
    assert check_sequence_lengths(cfg, model) == 2048 + 512 + 2048
    assert image_token_range(model) == (4, 16384)  # 56x56 .. 12.8 Mpx at 28 px per token
    check_image_budget(cfg, model)
    assert (cfg.data.problem_field, cfg.data.images_field) == ("problem", "images")
    assert cfg.model.freeze_vision and cfg.rollout.engine == "vllm"
    tiny = resolve({}, None, {"data": {"max_prompt_tokens": 4}})
    with pytest.raises(ConfigError, match="no prompt with an image fits"):
        check_image_budget(tiny, model)
