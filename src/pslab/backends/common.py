"""What every backend shares: building the data, model and optimizer from the config,
one minibatch's gradient, the epoch plan, and held-out evaluation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import Dataset, Deduper, Rows, load_dataset
from ..metrics import evaluate
from ..models import make_model
from ..optim import make_optimizer
from ..schedule import block_order, deal, lane_batch_size, split_batch


@dataclass
class Setup:
    cfg: object
    data: Dataset
    model: object
    opt: object
    dedupe: Deduper

    @staticmethod
    def build(cfg) -> "Setup":
        data = load_dataset(cfg.data)
        model = make_model(cfg.model)
        model.offset = start_offset(cfg.model.get("offset", "base_rate"), data)
        return Setup(cfg, data, model, make_optimizer(cfg.optim), Deduper(data.hash_bits))

    def lanes(self, epoch: int, n_lanes: int) -> list[list[int]]:
        t = self.cfg.train
        return deal(block_order(self.data.n_blocks, epoch, int(t.seed), bool(t.shuffle)), n_lanes)

    def lane_batch(self, n_lanes: int) -> int:
        return lane_batch_size(int(self.cfg.train.batch_size), n_lanes)

    def lane_sizes(self, n_lanes: int) -> list[int]:
        """Rows each lane reads a step (allreduce ranks, local lanes): the batch split as
        evenly as it goes (schedule.split_batch)."""
        return split_batch(int(self.cfg.train.batch_size), n_lanes)

    def steps_per_epoch(self, n_lanes: int) -> int:
        """Steps an epoch takes when its blocks are dealt over n_lanes (block sizes are
        known to every rank, so all agree without talking)."""
        lanes = self.lanes(0, n_lanes)
        return max(-(-sum(self.data.block_len(x) for x in lane) // b)
                   for lane, b in zip(lanes, self.lane_sizes(n_lanes)))

    def gradient(self, rows: Rows, fetch):
        """(unique keys, summed loss, summed gradient rows) of a batch; fetch(keys) gives
        the current parameter rows."""
        batch = self.dedupe(rows)
        loss, grad = self.model.loss_grad(batch, fetch(batch.uniq))
        return batch.uniq, loss, grad

    def evaluate(self, fetch) -> dict:
        return evaluate(self.model, self.data.test, fetch, self.data.hash_bits)


BASE_RATE_ROWS = 1 << 17


def base_rate(data: Dataset, max_rows: int = BASE_RATE_ROWS) -> float:
    """The share of positive training labels, smoothed ((positives + 1/2) / (rows + 1)) so
    a set without positives still has finite log-odds. Blocks spread evenly over the set
    until max_rows: all of a file this size, and of generated data (every rank would make
    every block) a sample (131k rows: the standard error of a 1% rate is 0.03 points)."""
    n_take = min(data.n_blocks, -(-max_rows // data.block_rows))
    ids = np.unique(np.linspace(0, data.n_blocks - 1, n_take).round().astype(int))
    pos = rows = 0.0
    for b in ids:
        y = data.train_labels(int(b))
        pos += float(y.sum())
        rows += len(y)
    return (pos + 0.5) / (rows + 1.0)


def start_offset(setting, data: Dataset) -> float:
    """model.offset: `base_rate` (the training base rate's log-odds, the default) or a
    number (0 starts every prediction at 1/2)."""
    if setting == "base_rate":
        p = base_rate(data)
        return float(np.log(p / (1 - p)))
    try:
        return float(setting)
    except (TypeError, ValueError):
        raise ValueError(f"model.offset={setting!r}: must be base_rate or a number") from None


def save_model(path, keys: np.ndarray, W: np.ndarray) -> None:
    import os
    order = np.argsort(keys, kind="stable")
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, keys=keys[order], W=W[order])
    os.replace(tmp, path)
