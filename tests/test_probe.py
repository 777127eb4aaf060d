"""The hint probe (`python -m rgpo_fast.probe`): its counting on hand-made flags, the
prompts it builds per level, and the command on the tiny model with a rationale file."""

import json

import pytest

from rgpo_fast.algos.presets import get_preset
from rgpo_fast.data.countdown import make_countdown
from rgpo_fast.probe import level_result, main, run_probe
from rgpo_fast.rewards import get_reward_fn
from rgpo_fast.rollout.base import Completion, RequestOutput


def test_level_counts_by_hand():
    accepted = [[True, False, True], [False, False, False], [True, True, False]]
    copies = [[True, True, False], [True, False, False], [False, False, False]]
    r = level_result(2, accepted, copies)
    assert (r.level, r.problems, r.samples) == (2, 3, 9)
    assert r.success == pytest.approx(4 / 9)
    assert r.pass_at_k == pytest.approx(2 / 3)
    # copies count only among accepted samples: one of the four (a copied failure is no copy)
    assert r.copy == pytest.approx(1 / 4)
    assert level_result(0, [[False]], [[True]]).copy == 0.0


class ScriptedEngine:
    """Answers every prompt with fixed texts; records the prompts of each call."""

    def __init__(self, tok, texts):
        self.tok, self.texts, self.calls = tok, texts, []

    def generate(self, prompts, params):
        self.calls.append([self.tok.decode(p) for p in prompts])
        ids = [self.tok(t, add_special_tokens=False)["input_ids"] for t in self.texts]
        return [RequestOutput(prompt_ids=list(p),
                              completions=[Completion(i, [0.0] * len(i)) for i in ids[:params.n]])
                for p in prompts]  # fmt: skip


def test_probe_builds_rgpo_prompts_per_level_and_scores(char_tok):
    ex = make_countdown(0, 2, "hard")
    # one sample copies the first problem's reference; the other is wrong everywhere
    engine = ScriptedEngine(char_tok, [ex[0].rationale, "1+1=2"])
    algo = get_preset("rgpo")  # the rationale's own steps: 3 lines, partial levels 1 and 2
    res = run_probe(engine, char_tok, ex, get_reward_fn("countdown"), algo, k=2,
                    max_new_tokens=8)  # fmt: skip
    assert [r.level for r in res] == [0, 1, 2] and [r.problems for r in res] == [2, 2, 2]
    assert "Partial solution" not in engine.calls[0][0]
    lines = ex[0].rationale.splitlines(keepends=True)
    assert f"Partial solution:\n{lines[0]}" in engine.calls[1][0]
    assert f"Partial solution:\n{''.join(lines[:2])}" in engine.calls[2][0]
    assert ex[0].rationale not in engine.calls[2][0]  # never the whole rationale
    for r in res:  # problem 0 solved by its copy; problem 1 never (another problem's text)
        assert r.success == pytest.approx(1 / 4) and r.pass_at_k == pytest.approx(1 / 2)
        assert r.copy == 1.0


def test_probe_command_on_the_tiny_model(tmp_path, capsys):
    from rgpo_fast.trainer.tiny_model import TinyModelSpec, ensure_tiny_model

    spec = TinyModelSpec(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64)  # fmt: skip
    model = ensure_tiny_model(spec, tmp_path / "cache")
    data = tmp_path / "d.jsonl"
    rows = [{"problem": "1+2=?", "answer": "3", "rationale": "1+2=3\nAnswer: 3"},
            {"problem": "2+2=?", "answer": "4"}]  # no rationale: not probed
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "probe.json"
    code = main(["--model", str(model), "--data", str(data), "--n", "4", "--k", "2",
                 "--segments", "2", "--max-new-tokens", "4", "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    # two lines: one partial level (the last line is always left to the model)
    assert [r["level"] for r in res] == [0, 1] and all(r["problems"] == 1 for r in res)
    assert "pass@2 %" in capsys.readouterr().out


def test_probe_bad_input_is_one_error_line(tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--data", "countdown:hard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --model") and "config.json" in err[0]
    assert main(["--model", str(tmp_path), "--data", "countdown:hard", "--k", "0"]) == 2
    assert "--k must be >= 1" in capsys.readouterr().err
