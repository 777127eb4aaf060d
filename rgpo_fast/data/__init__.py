"""rgpo_fast.data: dataset readers and validation, prompt building, the built-in tasks
(countdown, the default, and arith; rgpo_fast/data/tasks.py)."""

from rgpo_fast.data.arith import SPLITS as ARITH_SPLITS
from rgpo_fast.data.arith import arith_splits, make_arith
from rgpo_fast.data.prompts import build_prompt, encode_prompt, has_chat_template, user_message
from rgpo_fast.data.readers import DataError, FieldMap, ReadSummary, load_examples
from rgpo_fast.data.types import Example

__all__ = [
    "ARITH_SPLITS",
    "DataError",
    "Example",
    "FieldMap",
    "ReadSummary",
    "arith_splits",
    "build_prompt",
    "encode_prompt",
    "has_chat_template",
    "load_examples",
    "make_arith",
    "user_message",
]
