"""rgpo_fast.data: dataset readers and validation, prompt building, the built-in arith task."""

from rgpo_fast.data.arith import SPLITS as ARITH_SPLITS
from rgpo_fast.data.arith import arith_splits, make_arith
from rgpo_fast.data.types import Example

__all__ = ["ARITH_SPLITS", "Example", "arith_splits", "make_arith"]
