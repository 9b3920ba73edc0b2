"""Per-key optimizers: SGD, AdaGrad and FTRL-proximal.

Each works on a set of rows at a time: `init_state(w0)` gives the state rows of new
keys whose parameter rows start at w0, and: `update(w, state, g)` changes the parameter rows
`w` (u x dim) and their optimizer state rows (u x state_width) in place, given the
gradient rows `g` (already averaged over the global batch). L2 applies to the touched
rows only, as in sparse CTR systems. The same code runs in the local trainer, on every
allreduce replica and on the PS servers.
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
    name = "adagrad"

    def __init__(self, lr=0.1, l2=0.0, eps=1e-6, initial_accumulator=0.0):
        self.lr, self.l2, self.eps = float(lr), float(l2), float(eps)
        self.init_acc = float(initial_accumulator)

    def state_width(self, dim: int) -> int:
        return dim

    def init_state(self, w0: np.ndarray) -> np.ndarray:
        return np.full(w0.shape, self.init_acc, w0.dtype)

    def update(self, w, state, g):
        # w -= lr * g / (sqrt(state) + eps), in the same operation order, through two
        # scratch arrays instead of a temporary per operation (this runs on every step).
        if self.l2:
            g = g + self.l2 * w
        tmp = g * g
        state += tmp
        np.sqrt(state, out=tmp)
        tmp += self.eps
        step = self.lr * g
        step /= tmp
        w -= step


class FTRL:
    """FTRL-proximal (McMahan et al. 2013), per coordinate; state = [z, n]."""
    name = "ftrl"

    def __init__(self, alpha=0.05, beta=1.0, l1=0.0, l2=0.0):
        self.alpha, self.beta, self.l1, self.l2 = float(alpha), float(beta), float(l1), float(l2)

    def state_width(self, dim: int) -> int:
        return 2 * dim

    def init_state(self, w0: np.ndarray) -> np.ndarray:
        """z is set so that the closed form gives back w0 while n = 0: FM's random
        init survives FTRL's first step instead of being reset to zero."""
        z = -w0 * (self.beta / self.alpha + self.l2) - np.sign(w0) * self.l1
        return np.concatenate([z, np.zeros_like(w0)], axis=1)

    def update(self, w, state, g):
        d = w.shape[1]
        z, n = state[:, :d], state[:, d:]
        sigma = (np.sqrt(n + g * g) - np.sqrt(n)) / self.alpha
        z += g - sigma * w
        n += g * g
        shrunk = np.sign(z) * self.l1 - z
        denom = (self.beta + np.sqrt(n)) / self.alpha + self.l2
        w[...] = np.where(np.abs(z) <= self.l1, 0.0, shrunk / denom)

    def kkt_zero(self, w, g):
        """KKT filter for L1: a gradient on a zero weight that stays inside the L1 ball
        cannot make it nonzero this step, so it need not be pushed."""
        return (w == 0) & (np.abs(g) <= self.l1)


def make_optimizer(cfg):
    name = cfg.name
    if name == "sgd":
        return SGD(lr=cfg.lr, l2=cfg.get("l2", 0.0))
    if name == "adagrad":
        return AdaGrad(lr=cfg.lr, l2=cfg.get("l2", 0.0), eps=cfg.get("eps", 1e-6),
                       initial_accumulator=cfg.get("initial_accumulator", 0.0))
    if name == "ftrl":
        return FTRL(alpha=cfg.alpha, beta=cfg.beta, l1=cfg.l1, l2=cfg.get("l2", 0.0))
    raise ValueError(f"optim={name!r}: unknown optimizer (choose sgd, adagrad or ftrl)")
