"""Dataset readers on small files of every format, including malformed ones."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers_tokenizer import build_char_tokenizer  # noqa: E402

from rgpo_fast.data import DataError, FieldMap, load_examples  # noqa: E402

ROWS = [
    {"q": "1+2=?", "sol": "1+2=3\nAnswer: 3", "ans": "3"},
    {"q": "2*4=?", "sol": "", "ans": 8},
    {"q": "5-1=?", "sol": "5-1=4\nAnswer: 4", "ans": "4"},
]
FIELDS = FieldMap(problem="q", rationale="sol", answer="ans")


def _write(tmp: Path, fmt: str, rows: list[dict]) -> Path:
    if fmt == "jsonl":
        p = tmp / "d.jsonl"
        p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif fmt == "json":
        p = tmp / "d.json"
        p.write_text(json.dumps(rows))
    elif fmt == "csv":
        p = tmp / "d.csv"
        pd.DataFrame(rows).to_csv(p, index=False)
    elif fmt == "parquet":
        p = tmp / "d.parquet"
        pd.DataFrame([{k: str(v) for k, v in r.items()} for r in rows]).to_parquet(p)
    else:
        from datasets import Dataset

        p = tmp / "d_arrow"
        Dataset.from_list([{k: str(v) for k, v in r.items()} for r in rows]).save_to_disk(str(p))
    return p


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "arrow_dir"])
def test_every_format_reads_the_same_examples(tmp_path, fmt, capsys):
    path = _write(tmp_path, fmt, ROWS)
    examples, summary = load_examples(path, FIELDS)
    assert [(e.problem, e.rationale, e.answer) for e in examples] == [
        ("1+2=?", "1+2=3\nAnswer: 3", "3"),
        ("2*4=?", "", "8"),
        ("5-1=?", "5-1=4\nAnswer: 4", "4"),
    ]
    assert (summary.format, summary.rows, summary.kept, summary.empty_rationale) == (fmt, 3, 3, 1)
    assert examples[1].uid.endswith(":1")
    assert "3 kept" in capsys.readouterr().out


def test_json_column_dict_layout(tmp_path):
    p = tmp_path / "cols.json"
    p.write_text(json.dumps({"q": ["1+1=?"], "ans": ["2"]}))
    examples, _ = load_examples(p, FieldMap(problem="q", rationale=None, answer="ans"))
    assert examples[0].answer == "2" and examples[0].rationale == ""


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_missing_answer_raises_naming_file_row_field(tmp_path, fmt):
    rows = [ROWS[0], {"q": "3+3=?", "sol": "x", "ans": ""}]
    path = _write(tmp_path, fmt, rows)
    with pytest.raises(DataError, match=r"d\.\w+: row 1: field 'ans' is missing or empty"):
        load_examples(path, FIELDS)


def test_skip_mode_counts_invalid_rows(tmp_path):
    rows = [ROWS[0], {"sol": "no problem", "ans": "1"}, {"q": "9=?"}, ROWS[2]]
    path = _write(tmp_path, "jsonl", rows)
    examples, summary = load_examples(path, FIELDS, on_error="skip", verbose=False)
    assert [e.problem for e in examples] == ["1+2=?", "5-1=?"]
    assert summary.dropped == {"missing problem": 1, "missing answer": 1}
    assert "row 1: field 'q'" in summary.errors[0] and "row 2: field 'ans'" in summary.errors[1]
    assert "2 kept; dropped: 1 missing problem, 1 missing answer" in str(summary)


@pytest.mark.parametrize("field,value", [("q", {"text": "1+1"}), ("q", ["1", "+1"]),
                                         ("ans", [2]), ("ans", True), ("sol", 3.5)])
def test_fields_of_the_wrong_type_are_refused_with_file_row_field(tmp_path, field, value):
    """A dict problem would otherwise become its Python repr as prompt text; skip mode does
    not hide it either."""
    path = _write(tmp_path, "jsonl", [ROWS[0], {**ROWS[2], field: value}])
    with pytest.raises(DataError, match=rf"d\.jsonl: row 1: field '{field}' must be text"):
        load_examples(path, FIELDS, on_error="skip", verbose=False)


def test_numbers_become_their_text(tmp_path):
    path = _write(tmp_path, "jsonl", [{"q": 12, "sol": "", "ans": 4.0}, {"q": "x", "ans": 0.5}])
    examples, _ = load_examples(path, FIELDS, verbose=False)
    assert [(e.problem, e.answer) for e in examples] == [("12", "4"), ("x", "0.5")]


def test_required_rationale_drops_and_counts(tmp_path):
    path = _write(tmp_path, "jsonl", ROWS)  # ROWS[1] has an empty rationale
    examples, summary = load_examples(path, FIELDS, verbose=False, require_rationale=True)
    assert len(examples) == 2 and summary.dropped == {"no rationale": 1}
    assert summary.empty_rationale == 0


def test_malformed_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "1", "ans": "1"}\n{not json\n')
    with pytest.raises(DataError, match="line 2"):
        load_examples(bad, FIELDS, verbose=False)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("[1, 2")
    with pytest.raises(DataError, match="bad.json"):
        load_examples(bad_json, FIELDS, verbose=False)
    bad_pq = tmp_path / "bad.parquet"
    bad_pq.write_text("not parquet")
    with pytest.raises(DataError, match="parquet"):
        load_examples(bad_pq, FIELDS, verbose=False)
    with pytest.raises(DataError, match="unknown file type"):
        (tmp_path / "d.txt").write_text("x")
        load_examples(tmp_path / "d.txt", FIELDS)
    with pytest.raises(FileNotFoundError):
        load_examples(tmp_path / "nope.jsonl", FIELDS)
    with pytest.raises(ValueError, match="on_error"):
        load_examples(bad, FIELDS, on_error="ignore")
    scalar = tmp_path / "rows.jsonl"
    scalar.write_text("[1]\n")
    with pytest.raises(DataError, match="row 0: expected an object"):
        load_examples(scalar, FIELDS, verbose=False)


def test_long_prompts_skipped_and_counted(tmp_path):
    tok = build_char_tokenizer(tmp_path / "tok")
    rows = [ROWS[0], {"q": "1+" * 40 + "1=?", "sol": "", "ans": "41"}]
    path = _write(tmp_path, "jsonl", rows)
    # plain template "{user}\n": "1+2=?\n" is 6 character tokens
    examples, summary = load_examples(
        path, FIELDS, max_prompt_tokens=6, tokenizer=tok, verbose=False
    )
    assert [e.problem for e in examples] == ["1+2=?"]
    assert summary.dropped == {"prompt over the length limit": 1}
    assert summary.empty_rationale == 0
    _, summary = load_examples(path, FIELDS, max_prompt_tokens=5, tokenizer=tok, verbose=False)
    assert summary.kept == 0 and summary.dropped == {"prompt over the length limit": 2}
    with pytest.raises(ValueError, match="tokenizer"):
        load_examples(path, FIELDS, max_prompt_tokens=5)
