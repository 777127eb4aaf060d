"""Pulling the final answer out of a completion, and normalising it for exact match."""

from __future__ import annotations

import re

# "Answer: 42", "answer - 42", "**Answer:** 42"; the LAST such line counts (a model that
# revises its answer is judged on its final word).
_ANSWER_LINE = re.compile(r"answer\**\s*[:：=\-]\s*\**\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)(e[-+]?\d+)?")


def last_boxed(text: str) -> str | None:
    r"""Content of the last \boxed{...} (or \fbox{...}) with balanced braces, else None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None  # unbalanced: treat as no answer


def answer_line(text: str) -> str | None:
    """The value of the last "Answer: ..." line, else None."""
    matches = _ANSWER_LINE.findall(text)
    return matches[-1].strip() if matches else None


def extract_answer(text: str) -> str | None:
    """The final answer: the last boxed expression, else the last "Answer:" line."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    boxed = last_boxed(text)
    return boxed if boxed is not None else answer_line(text)


def normalize_answer(ans: str) -> str:
    """Canonical string for exact match.

    Strips $...$ and surrounding punctuation, currency signs, thousands separators; a
    string that starts with a number is reduced to that number (units and trailing words
    dropped: "12 cm" -> "12"); integral decimals compare equal to integers ("4.0" -> "4").
    Anything else is lower-cased with inner whitespace removed.
    """
    s = ans.strip().strip("$").strip()
    s = s.rstrip(".").strip()
    s = re.sub(r"^\\text\{(.*)\}$", r"\1", s)
    s = s.lstrip("$€£").strip()
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)  # 1,000 -> 1000
    m = _NUMBER.match(s)
    if m:
        num = m.group(0)
        try:
            value = float(num)
        except ValueError:  # pragma: no cover (regex only matches floats)
            return num
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    return re.sub(r"\s+", "", s).lower()
