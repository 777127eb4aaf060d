"""A trained model people can use: `<output_dir>/final/` after a run, `hf/step_<n>/` with
`train.save_hf_every`, and `python -m rgpo_fast.export` for any checkpoint, all loaded back
through the plain AutoModelForCausalLM / AutoTokenizer path that TRL and vLLM take."""

import json

import pytest
import torch

from rgpo_fast.export import main as export_main
from rgpo_fast.train import main
from rgpo_fast.trainer.hf_export import hf_state_dict
from rgpo_fast.trainer.testing import tiny_args
from rgpo_fast.trainer.tiny_model import load_model_and_tokenizer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = root / "run"
    assert main(tiny_args(out, root / "cache", steps=2, extra=[
        "--train.save_every", "1", "--train.keep_checkpoints", "3",
        "--train.save_hf_every", "1", "--logging.plots", "false"])) == 0
    return out


def _auto(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))


def _same_weights(model, policy_state):
    hf = hf_state_dict(policy_state)
    for name, p in model.state_dict().items():
        torch.testing.assert_close(p, hf[name], rtol=0, atol=0, msg=name)


def test_final_model_is_the_trained_policy_through_the_auto_classes(run):
    final = run / "final"
    assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    assert json.loads((run / "summary.json").read_text())["final_model"] == str(final)
    model, tok = _auto(final)
    _same_weights(model, torch.load(run / "checkpoints" / "step_000002" / "model.pt"))
    # the tokenizer is the run's: same ids as the project's loader, and it generates
    _, ours = load_model_and_tokenizer(final)
    text = "4 6 3 -> 21\n"
    assert tok(text)["input_ids"] == ours(text)["input_ids"]
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    gen = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]


def test_save_hf_every_writes_each_step(run):
    for step in (1, 2):
        model, _ = _auto(run / "hf" / f"step_{step:06d}")
        _same_weights(model, torch.load(run / "checkpoints" / f"step_{step:06d}" / "model.pt"))


def test_export_any_checkpoint(run, tmp_path, capsys):
    assert export_main([str(run), "--step", "1", "--out", str(tmp_path / "s1")]) == 0
    model, _ = _auto(tmp_path / "s1")
    _same_weights(model, torch.load(run / "checkpoints" / "step_000001" / "model.pt"))
    assert export_main([str(run), "--out", str(tmp_path / "newest"), "--dtype", "bfloat16"]) == 0
    newest, _ = _auto(tmp_path / "newest")
    assert next(newest.parameters()).dtype == torch.bfloat16
    capsys.readouterr()
    assert export_main([str(run), "--step", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint of step 7" in err[0] and "0, 1, 2" in err[0]
    assert export_main([str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_hf_state_dict_rejects_other_dicts():
    with pytest.raises(ValueError, match="not a policy state dict"):
        hf_state_dict({"model.embed_tokens.weight": torch.zeros(1)})


def _listing(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*")
                  if p.is_file() and p.name != ".lock")


def test_export_never_replaces_what_it_did_not_write(run, tmp_path, capsys):
    """A folder of other models and the run directory itself are refused with one error
    line and left byte for byte as they were; --overwrite does not change that."""
    models = tmp_path / "models"
    (models / "someone_elses").mkdir(parents=True)
    (models / "someone_elses" / "model.safetensors").write_bytes(b"weights")
    for target in (models, run, run / "checkpoints" / "step_000002"):
        before = _listing(target)
        for extra in ([], ["--overwrite"]):
            capsys.readouterr()
            assert export_main([str(run), "--out", str(target), *extra]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "is not an earlier export" in err[0], err
            assert _listing(target) == before


def test_export_replaces_an_earlier_export_only_with_overwrite(run, tmp_path, capsys):
    out = tmp_path / "exp"
    assert export_main([str(run), "--step", "1", "--out", str(out)]) == 0
    marker = json.loads((out / "rgpo_fast_export.json").read_text())
    assert marker["step"] == 1 and marker["run"] == str(run)
    capsys.readouterr()
    assert export_main([str(run), "--step", "2", "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert json.loads((out / "rgpo_fast_export.json").read_text())["step"] == 1
    assert export_main([str(run), "--step", "2", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "rgpo_fast_export.json").read_text())["step"] == 2
    model, _ = _auto(out)
    _same_weights(model, torch.load(run / "checkpoints" / "step_000002" / "model.pt"))
    assert not any(p.name.startswith((".tmp-", ".old-")) for p in tmp_path.iterdir())
