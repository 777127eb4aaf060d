"""Dataset readers: JSONL, JSON, Parquet, CSV and `datasets.save_to_disk` directories.

Every row goes through one validation path:
- a field of the wrong type is an error naming file, row and field, whatever `on_error`:
  problem and answer are text, or numbers, which become their text (2.0 -> "2"); the
  rationale is text or absent. A list, a dict or a bool is never guessed into a prompt;
- missing/empty problem or answer: an error naming file, row and field
  (`on_error="raise"`), or the row is dropped and counted (`on_error="skip"`);
- images (an `images` column: paths, relative to the data file's folder, bytes, PIL images
  or a list of them; data/multimodal.py) are decoded once here: a missing file or bytes
  that do not decode are an error naming file, row and field, whatever `on_error`;
- empty rationale: allowed and counted (that prompt is never guided), or with
  `require_rationale` (SFT data) dropped and counted;
- prompt longer than `max_prompt_tokens` (after the prompt template, measured with the
  tokenizer, the images' tokens included when a processor is given): dropped and counted.
`load_examples` returns the examples and a `ReadSummary` (counts by reason), and prints it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgpo_fast.data.multimodal import PromptEncoder, load_images
from rgpo_fast.data.types import Example

FORMATS = ("jsonl", "json", "parquet", "csv", "arrow_dir")


@dataclass(frozen=True)
class FieldMap:
    """Column names of the problem, rationale, answer and images in the source file."""

    problem: str = "problem"
    rationale: str | None = "rationale"
    answer: str = "answer"
    images: str | None = "images"


# Why a row is dropped (ReadSummary.dropped's keys).
MISSING_PROBLEM = "missing problem"
MISSING_ANSWER = "missing answer"
NOT_AN_OBJECT = "not an object"
TOO_LONG = "prompt over the length limit"
NO_RATIONALE = "no rationale"


@dataclass
class ReadSummary:
    path: str
    format: str
    rows: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    empty_rationale: int = 0  # kept rows without a rationale (never guided)
    errors: list[str] = field(default_factory=list)  # the first few drops, with their row

    def drop(self, reason: str, message: str | None = None) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if message and len(self.errors) < 5:
            self.errors.append(message)

    def to_dict(self) -> dict:
        return {"path": self.path, "rows": self.rows, "kept": self.kept,
                "dropped": dict(self.dropped), "without_rationale": self.empty_rationale}

    def __str__(self) -> str:
        dropped = ", ".join(f"{n} {why}" for why, n in self.dropped.items()) or "none"
        return (f"read {self.path} ({self.format}): {self.rows} rows, {self.kept} kept; "
                f"dropped: {dropped}; {self.empty_rationale} kept without rationale "
                "(never guided)")


class DataError(ValueError):
    """A malformed row or file; the message names the file, row and field."""


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            return "arrow_dir"
        raise DataError(f"{path}: a directory but not a datasets.save_to_disk dataset")
    suffix = path.suffix.lower()
    for fmt, sfx in (
        ("jsonl", ".jsonl"),
        ("jsonl", ".ndjson"),
        ("json", ".json"),
        ("parquet", ".parquet"),
        ("csv", ".csv"),
    ):
        if suffix == sfx:
            return fmt
    raise DataError(f"{path}: unknown file type {suffix!r}; supported: {', '.join(FORMATS)}")


def _iter_rows(path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {i + 1} is not valid JSON ({exc.msg})") from None
                yield row
    elif fmt == "json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict):  # {"data": [...]} or {"col": [...], ...}
            if len(data) == 1 and isinstance(next(iter(data.values())), list):
                data = next(iter(data.values()))
            elif all(isinstance(v, list) for v in data.values()):
                n = len(next(iter(data.values())))
                data = [{k: v[i] for k, v in data.items()} for i in range(n)]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of rows (or column lists) at the top level")
        yield from data
    elif fmt in ("parquet", "csv"):
        import pandas as pd  # noqa: PLC0415

        try:
            df = (
                pd.read_parquet(path)
                if fmt == "parquet"
                else pd.read_csv(path, dtype=str, keep_default_na=False)
            )
        except Exception as exc:  # noqa: BLE001 (pandas/pyarrow raise many types)
            raise DataError(f"{path}: cannot read as {fmt}: {exc}") from None
        yield from df.to_dict(orient="records")
    elif fmt == "arrow_dir":
        from datasets import load_from_disk  # noqa: PLC0415

        ds = load_from_disk(str(path))
        if hasattr(ds, "keys") and not hasattr(ds, "column_names"):  # a DatasetDict
            if "train" not in ds:
                raise DataError(f"{path}: DatasetDict without a 'train' split: {list(ds)}")
            ds = ds["train"]
        yield from ds
    else:
        raise DataError(f"{path}: unsupported format {fmt!r}; supported: {', '.join(FORMATS)}")


def _text(value: Any, where: str, numbers: bool = True) -> str:
    """Cell -> str; None/NaN -> "" (missing). With `numbers`, an int or float becomes its
    text (2.0 -> "2"); anything else that is not a string (a list, a dict, a bool) is a
    DataError naming `where` (file, row, field)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value.strip()
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    kind = "text or a number" if numbers else "text"
    raise DataError(f"{where} must be {kind}, got {type(value).__name__} {value!r:.60}")


def load_examples(
    path: str | Path,
    fields: FieldMap | None = None,
    *,
    on_error: str = "raise",
    max_prompt_tokens: int | None = None,
    tokenizer: Any = None,
    prompt_kwargs: dict[str, Any] | None = None,
    fmt: str | None = None,
    limit: int | None = None,
    verbose: bool = True,
    require_rationale: bool = False,
    processor: Any = None,
) -> tuple[list[Example], ReadSummary]:
    """Read and validate a dataset file; see the module docstring for the rules.

    The prompt length is measured on the built prompt (data.multimodal.PromptEncoder with
    `prompt_kwargs`: the system message), in tokens of `tokenizer` (required with
    `max_prompt_tokens`); a row's images count with the tokens `processor` (a
    vision-language model's) expands them into.
    """
    fields = fields or FieldMap()
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r} is invalid; valid: raise, skip")
    if max_prompt_tokens is not None and tokenizer is None:
        raise ValueError("max_prompt_tokens needs a tokenizer to count tokens")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dataset not found: {p}")
    fmt = fmt or detect_format(p)
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is invalid; valid: {', '.join(FORMATS)}")
    summary = ReadSummary(path=str(p), format=fmt)
    examples: list[Example] = []

    def bad(reason: str, msg: str) -> None:
        if on_error == "raise":
            raise DataError(msg)
        summary.drop(reason, msg)

    for i, row in enumerate(_iter_rows(p, fmt)):
        if limit is not None and summary.kept >= limit:
            break
        summary.rows += 1
        if not isinstance(row, dict):
            bad(NOT_AN_OBJECT, f"{p}: row {i}: expected an object, got {type(row).__name__}")
            continue
        at = f"{p}: row {i}: field"
        problem = _text(row.get(fields.problem), f"{at} {fields.problem!r}")
        answer = _text(row.get(fields.answer), f"{at} {fields.answer!r}")
        rationale = (_text(row.get(fields.rationale), f"{at} {fields.rationale!r}", numbers=False)
                     if fields.rationale else "")  # fmt: skip
        if not problem:
            bad(MISSING_PROBLEM, f"{at} {fields.problem!r} is missing or empty")
            continue
        if not answer:
            bad(MISSING_ANSWER, f"{at} {fields.answer!r} is missing or empty")
            continue
        if require_rationale and not rationale:
            summary.drop(NO_RATIONALE)
            continue
        images = (load_images(row.get(fields.images), f"{at} {fields.images!r}",
                              p.parent if p.is_file() else p) if fields.images else ())
        if max_prompt_tokens is not None:
            encoder = PromptEncoder(tokenizer, processor, **(prompt_kwargs or {}))
            vision = encoder.vision(images, f"{at} {fields.images!r}") if processor else None
            if len(encoder.encode(problem, vision=vision)) > max_prompt_tokens:
                summary.drop(TOO_LONG)
                continue
        if not rationale:
            summary.empty_rationale += 1  # among kept rows
        examples.append(Example(problem=problem, rationale=rationale, answer=answer,
                                uid=f"{p.name}:{i}", images=images))
        summary.kept += 1
    if verbose:
        print(summary)
    return examples, summary
