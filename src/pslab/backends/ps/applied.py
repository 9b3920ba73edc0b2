"""Which batches each key range has absorbed: the record that makes pushes exactly-once.

A batch id (ledger.batch_id: epoch, lane, index) is fixed when the plan is made and
travels with every push of the batch, also when the batch is handed to another worker
or run twice as a backup instance. A push part covers the ranges its server is primary
of (under the sender's membership generation); for each range it covers, the server
applies it only if that range has not absorbed the batch yet (Kafka's idempotent
producer, per range instead of per partition). The record is per range so that it can
travel with the range: it is forwarded to the range's backups with every update, sent
with a re-replication snapshot, and written into checkpoints and restored with them.

`rows[r]` counts the training rows whose gradients range r absorbed: with every push
covering every range of its server, each range must end with exactly the planned rows
(summary.json's rows_applied), whatever failed on the way.
"""
from __future__ import annotations

import numpy as np


class AppliedLog:
    def __init__(self, n_ranges: int):
        self.bids: list[set] = [set() for _ in range(n_ranges)]
        self.rows = np.zeros(n_ranges, np.int64)

    def fresh(self, bid: int, ranges) -> list[int]:
        """The ranges (of `ranges`) that have not absorbed batch `bid`."""
        return [r for r in ranges if bid not in self.bids[r]]

    def record(self, bid: int, rows: int, ranges) -> None:
        for r in ranges:
            if bid not in self.bids[r]:
                self.bids[r].add(bid)
                self.rows[r] += rows

    def export(self, ranges) -> dict:
        """{range: [rows, sorted bids]} for snapshots, checkpoints and final records (JSON)."""
        return {str(r): [int(self.rows[r]), sorted(int(b) for b in self.bids[r])] for r in ranges}

    def load(self, d: dict) -> None:
        """Replace the record of the ranges in d (an export())."""
        for r, (rows, bids) in d.items():
            self.bids[int(r)] = set(int(b) for b in bids)
            self.rows[int(r)] = int(rows)
