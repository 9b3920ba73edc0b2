"""BSP clocks kept per key range, so a server that inherits ranges mid-clock still applies
each clock as one update.

A BSP clock of a range is complete when every live worker's contribution to it has come
in: its push covers the range (a push covers the ranges its server led under the
sender's membership generation; a part re-routed after a server died names its ranges).
A server applies its oldest incomplete clock first, for exactly the ranges at that clock,
summing the parts in worker order: a range it inherits from a dead primary continues
from the clock its last forwarded update reached, takes the workers' re-routed parts of
the clocks the dead primary never applied, and only then moves on; so the model ends as
if nothing had failed. Ranges restored from a checkpoint (no copy was left) continue at
the server's own clock; a part for a clock a range has already passed is applied alone
(still exactly once).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Part:
    msg: object                   # the push (protocol.Msg)
    worker: int
    fresh: set                    # ranges that have not applied its batch (the rest drop it)
    left: set = field(default_factory=set)  # covered ranges not applied yet


class RangeClocks:
    def __init__(self, n_ranges: int, start_clock: int):
        self.next = np.full(n_ranges, int(start_clock), np.int64)  # per range: the next clock to apply
        self.parts: dict[int, list[Part]] = {}

    def is_late(self, p: Part) -> bool:
        return bool(p.left) and bool((self.next[list(p.left)] > p.msg.clock).all())

    def add(self, p: Part) -> None:
        self.parts.setdefault(p.msg.clock, []).append(p)

    def ready(self, lead: list[int], counted) -> tuple[int, list[int], list[Part]] | None:
        """(clock, its ranges, its parts) of the oldest complete clock among `lead`, or None."""
        if not lead:
            return None
        at = self.next[lead]
        c = int(at.min())
        rc = [r for r, a in zip(lead, at) if a == c]
        parts = self.parts.get(c, [])
        need = set(rc)
        for w in counted:
            have = set().union(*(p.left for p in parts if p.worker == w))
            if not need <= have:
                return None
        return c, rc, [p for p in parts if p.left & need]

    def done(self, c: int, rc: list[int]) -> list[Part]:
        """Clock c applied for ranges rc; returns the parts now fully applied."""
        self.next[rc] = c + 1
        need, finished, keep = set(rc), [], []
        for p in self.parts.get(c, []):
            p.left -= need
            (keep if p.left else finished).append(p)
        if keep:
            self.parts[c] = keep
        else:
            self.parts.pop(c, None)
        return finished

    def applied(self, lead: list[int]) -> int | None:
        return int(self.next[lead].min()) if lead else None
