"""SIGINT, SIGTERM and SIGHUP during a launch.

The first signal is only noted: the launcher's watch loop sees it within 0.1 s, ends the
whole job (pslab.launcher.procs.end_group, a few seconds at most), writes summary.json
with status "interrupted" and the signal, and exits with 128 + signal. A second signal
does not wait for any of that: it SIGKILLs the job (`hard_stop`) and exits at once.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(KeyboardInterrupt):
    """A launch ended by a signal; summary.json is written (when there was a run dir).
    A KeyboardInterrupt, so that code calling pslab.launch.launch in a loop (the sweeps)
    stops as it would on Ctrl-C."""

    def __init__(self, signum: int, summary: dict | None = None):
        super().__init__(signal_name(signum))
        self.signum = signum
        self.summary = summary

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class SignalGuard:
    """`with SignalGuard() as guard:` catches the three signals for the block (in the main
    thread; elsewhere signals cannot be caught and the guard does nothing). Outside the
    block the previous handlers are back."""

    def __init__(self):
        self.signum: int | None = None
        self.hard_stop = None  # callable: SIGKILL the job now (set once mpirun runs)
        self._old: dict = {}

    def __enter__(self) -> "SignalGuard":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def check(self) -> None:
        """Raise Interrupted if a signal came (for the steps before mpirun starts)."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            return
        # A second signal: the user does not want to wait for a clean end.
        try:
            sys.stderr.write(f"\n[pslab] {signal_name(signum)} again: killing the job now\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # the terminal is gone (SIGHUP)
        if self.hard_stop is not None:
            self.hard_stop()
        os._exit(128 + signum)
