"""Per-key optimizers: SGD, AdaGrad and FTRL-proximal.

Each works on a set of rows at a time: `init_state(w0)` gives the state rows of new
keys whose parameter rows start at w0, and: `update(w, state, g)` changes the parameter rows
`w` (u x dim) and their optimizer state rows (u x state_width) in place, given the
gradient rows `g` (already averaged over the global batch). L2 applies to the touched
rows only, as in sparse CTR systems. The same code runs in the local trainer, on every
allreduce replica and on the PS servers.

Units. The adaptive optimizers (AdaGrad, FTRL) take their settings per example, as the
papers state them: a key's gradient is that of the *summed* loss, so one occurrence
contributes |p - y| <= 1 whatever the batch size, and FTRL's beta = 1 or L1 = 1 mean what
they mean in McMahan et al. (2013). `batch` is the number of rows the mean gradient `g` is
taken over (train.batch_size: a step of local, allreduce and PS BSP); rather than scaling
every gradient by it, the settings that carry a gradient unit are divided by it once.
With that, a key seen once in a batch moves as it would in a one-example-at-a-time
learner, and a frequent key's per-coordinate rate still normalizes its batch sums. Every
backend divides a step's summed gradient by `batch` (`divisor`), also when the step has
fewer rows (an epoch's tail, survivors after an elastic shrink, one worker's push under
SSP/ASP): such a step is part of a batch, and its rows count as much as any others. SGD
keeps the textbook minibatch step on the mean over the step's rows.
"""
from __future__ import annotations

import numpy as np


class SGD:
    name = "sgd"

    def __init__(self, lr=0.1, l2=0.0):
        self.lr, self.l2 = float(lr), float(l2)

    def state_width(self, dim: int) -> int:
        return 0

    def init_state(self, w0: np.ndarray) -> np.ndarray:
        return np.zeros((len(w0), 0), w0.dtype)

    def update(self, w, state, g):
        w -= self.lr * (g + self.l2 * w)


class AdaGrad:
    """Per-coordinate rates lr / (sqrt(initial_accumulator + sum g^2) + eps), per example
    units (see the module docstring). The initial accumulator is a prior of that many
    squared unit gradients: without it AdaGrad's first step on a key is a full lr * sign(g)
    whatever the gradient's size, and most keys of a CTR log are rare, so one-off keys get
    jolted. With 1 the first step is lr * g / sqrt(1 + g^2): small for a small residual."""
    name = "adagrad"

    def __init__(self, lr=0.1, l2=0.0, eps=1e-6, initial_accumulator=0.0, batch=1):
        self.lr, self.l2, self.eps = float(lr), float(l2), float(eps)
        self.init_acc = float(initial_accumulator)
        self.batch = check_batch(batch)
        # In batch-mean units: g_sum = batch * g, so acc_sum = batch^2 * acc and
        # lr * g_sum / (sqrt(acc_sum) + eps) = lr * g / (sqrt(acc) + eps / batch).
        self._eps = self.eps / self.batch
        self._acc0 = self.init_acc / self.batch ** 2
        self._l2 = self.l2 / self.batch

    def state_width(self, dim: int) -> int:
        return dim

    def init_state(self, w0: np.ndarray) -> np.ndarray:
        return np.full(w0.shape, self._acc0, w0.dtype)

    def update(self, w, state, g):
        # w -= lr * g / (sqrt(state) + eps), in the same operation order, through two
        # scratch arrays instead of a temporary per operation (this runs on every step).
        if self._l2:
            g = g + self._l2 * w
        tmp = g * g
        state += tmp
        np.sqrt(state, out=tmp)
        tmp += self._eps
        step = self.lr * g
        step /= tmp
        w -= step


class FTRL:
    """FTRL-proximal (McMahan et al. 2013, Algorithm 1), per coordinate; state = [z, n].
    Per-coordinate rates alpha / (beta + sqrt(n)); beta = 1 keeps a key's first steps
    small. alpha, beta, l1 and l2 are per example (module docstring); they are kept as
    given, the update uses them divided by the batch (z and n stay in batch-mean units)."""
    name = "ftrl"

    def __init__(self, alpha=0.1, beta=1.0, l1=1.0, l2=1.0, batch=1):
        self.alpha, self.beta, self.l1, self.l2 = float(alpha), float(beta), float(l1), float(l2)
        self.batch = check_batch(batch)
        # z_sum = batch * z and n_sum = batch^2 * n turn the paper's closed form into the
        # same one on (z, n) with beta, l1 and l2 divided by the batch.
        self._beta, self._l1, self._l2 = self.beta / self.batch, self.l1 / self.batch, self.l2 / self.batch

    def state_width(self, dim: int) -> int:
        return 2 * dim

    def init_state(self, w0: np.ndarray) -> np.ndarray:
        """z is set so that the closed form gives back w0 while n = 0: FM's random
        init survives FTRL's first step instead of being reset to zero."""
        z = -w0 * (self._beta / self.alpha + self._l2) - np.sign(w0) * self._l1
        return np.concatenate([z, np.zeros_like(w0)], axis=1)

    def update(self, w, state, g):
        d = w.shape[1]
        z, n = state[:, :d], state[:, d:]
        sigma = (np.sqrt(n + g * g) - np.sqrt(n)) / self.alpha
        z += g - sigma * w
        n += g * g
        shrunk = np.sign(z) * self._l1 - z
        denom = (self._beta + np.sqrt(n)) / self.alpha + self._l2
        w[...] = np.where(np.abs(z) <= self._l1, 0.0, shrunk / denom)

    def kkt_zero(self, w, g):
        """KKT filter for L1: a gradient (batch mean) on a zero weight that stays inside
        the L1 ball cannot make it nonzero this step, so it need not be pushed."""
        return (w == 0) & (np.abs(g) <= self._l1)


def divisor(opt, rows: int):
    """What a step's summed gradient is divided by before `update`: the adaptive
    optimizers' `batch` (their settings are per example, so a step of fewer rows, the end
    of an epoch, a survivor's share after a failure, one worker's push under SSP/ASP, is a
    part of a batch, not a batch of its own), SGD's actual rows (the minibatch mean)."""
    return getattr(opt, "batch", None) or rows


def check_batch(batch) -> int:
    b = int(batch)
    if b <= 0:
        raise ValueError(f"optim.batch={batch}: must be a positive number of rows")
    return b


def make_optimizer(cfg):
    """The optimizer of `cfg.optim`; its `batch` (rows a mean gradient is taken over)
    defaults to train.batch_size by interpolation in conf/optim/*.yaml."""
    name = cfg.name
    batch = cfg.get("batch", 1)
    if name == "sgd":
        return SGD(lr=cfg.lr, l2=cfg.get("l2", 0.0))
    if name == "adagrad":
        return AdaGrad(lr=cfg.lr, l2=cfg.get("l2", 0.0), eps=cfg.get("eps", 1e-6),
                       initial_accumulator=cfg.get("initial_accumulator", 0.0), batch=batch)
    if name == "ftrl":
        return FTRL(alpha=cfg.alpha, beta=cfg.beta, l1=cfg.l1, l2=cfg.get("l2", 0.0), batch=batch)
    raise ValueError(f"optim={name!r}: unknown optimizer (choose sgd, adagrad or ftrl)")
