"""A wall-clock limit per verification, so one pathological string cannot hang a step.

Two mechanisms, chosen per call:
- main thread of a POSIX process: `signal.setitimer(ITIMER_REAL)` with a float deadline.
  The handler raises inside the running code, so the work really stops. Any previous
  SIGALRM handler and timer are restored afterwards.
- elsewhere (worker threads, platforms without SIGALRM): the call runs in a daemon
  thread and we wait at most `seconds`. On timeout the caller gets the default at once;
  the abandoned thread may keep running in the background (Python cannot kill a thread),
  which costs CPU but never blocks the training step.

math-verify's own timeouts also use SIGALRM (with whole seconds) and would cancel our
timer, so callers disable them and rely on this guard instead.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class VerificationTimeout(Exception):
    """Raised inside the guarded call when its deadline passes (signal mechanism)."""


def _can_use_signal() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def run_with_timeout(fn: Callable[[], T], seconds: float | None, default: T) -> tuple[T, bool]:
    """Run `fn()` with a deadline. Returns (result, timed_out); `default` on timeout.

    Exceptions other than the timeout propagate. `seconds=None` or <= 0 runs `fn` unguarded.
    """
    if seconds is None or seconds <= 0:
        return fn(), False
    if _can_use_signal():

        def _handler(signum, frame):  # noqa: ARG001 (signal handler signature)
            raise VerificationTimeout()

        old_handler = signal.signal(signal.SIGALRM, _handler)
        old_timer = signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn(), False
        except VerificationTimeout:
            return default, True
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)
            if old_timer[0] > 0:  # re-arm an outer timer that was pending
                signal.setitimer(signal.ITIMER_REAL, *old_timer)

    box: dict[str, object] = {}

    def _target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller's thread)
            box["error"] = exc

    worker = threading.Thread(target=_target, daemon=True, name="rgpo-verify")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        return default, True
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"], False  # type: ignore[return-value]
