"""Progress that reads well wherever it goes.

On a terminal a tqdm bar (on stderr); anywhere else (`make train > log 2>&1`, a cluster's
job log) a bar is hundreds of KB of carriage-return frames, so progress is instead one
plain line on stdout every `interval_s` seconds and at the end. Open bars are tracked so
that an error can close them first (`close_all`): its `error:` line then starts on a line
of its own instead of after the bar's last frame.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

_OPEN: list[Progress] = []


def on_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """`update(n, **postfix)` / `close()`; a tqdm bar on a terminal, plain lines elsewhere."""

    def __init__(self, total: int, desc: str, initial: int = 0, interval_s: float = 10.0,
                 bar: bool | None = None) -> None:  # fmt: skip
        self.total, self.desc, self.n = total, desc, initial
        self.interval_s = interval_s
        self.postfix: dict[str, Any] = {}
        self._bar = None
        if on_terminal() if bar is None else bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
        self._t0 = self._last = time.monotonic()
        _OPEN.append(self)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        self.postfix = postfix
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)
        elif time.monotonic() - self._last >= self.interval_s:
            self._line()

    def _line(self) -> None:
        self._last = time.monotonic()
        fields = "".join(f", {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}/{self.total}{fields}, "
              f"{self._last - self._t0:.0f}s", flush=True)  # fmt: skip

    def close(self) -> None:
        if self in _OPEN:
            _OPEN.remove(self)
            if self._bar is not None:
                self._bar.close()  # leaves the bar and ends its line
            elif self.n:
                self._line()


def close_all() -> None:
    """Close every open progress display (before an error line is printed)."""
    for p in list(_OPEN):
        p.close()


def quiet_libraries() -> None:
    """No per-file progress bars or info logs from transformers / the hub: our progress
    and `error:` lines only."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
