"""The one kind of failure a user can fix, whatever its source.

Configuration, data, paths, the run directory (creation, the lock, a full disk) and the
installed packages all raise a subclass of `UserError`; `python -m rgpo_fast.train` turns
any of them into one `error:` line and exit code 2 (`--debug` shows the traceback). Any
other exception is a bug: its traceback is printed, with a line saying how to report it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; its message names what is wrong and what to change."""


class NonFiniteError(UserError):
    """A loss, gradient norm, weight or logit that is NaN or infinite: the run diverged
    (rgpo_fast/trainer/nonfinite.py)."""
