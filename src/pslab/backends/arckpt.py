"""Checkpoints of the allreduce backends (classic and elastic), written by rank 0 alone.

    python -m pslab.launch -n 4 backend=allreduce backend.checkpoint_every=10
    python -m pslab.launch -n 4 backend=allreduce backend.checkpoint_every_s=30
    python -m pslab.launch -n 4 backend=allreduce backend.resume_from=runs/x      # resume by hand
    python -m pslab.launch -n 4 --max-restarts 2 backend=allreduce backend.checkpoint_every=10 \
        faults=kill_one_worker                                                 # the launcher resumes

Every replica is the same after a completed step, and every rank holds every member's
row stream as arithmetic (elastic.Plan), so rank 0 alone can write the whole job's
state: the model (parameters W and optimizer state S), the step, epoch and examples
counts, and each member's unfinished row segments (the data position). There is no
random stream to save: the block order is a function of (train.seed, epoch) and a
key's initial row a function of the key, so the manifest records the seed and a
resumed run refuses another one.

    <run dir>/checkpoints/step-00000010/model.npz      (keys, W, S)
    <run dir>/checkpoints/step-00000010/manifest.json  (step, epoch, plan, ...; written last)
    <run dir>/checkpoints/LATEST                       (names the newest manifest)

Each file is written under a temporary name, then renamed; the manifest only after the
model file is in place, LATEST only after the manifest: a reader that finds a manifest
finds a whole checkpoint. Other ranks wait in the next step's collective while rank 0
writes (the write time is the checkpoint's cost, recorded in its `checkpoint` event).

Resume (backend.resume_from: a manifest, a checkpoints folder or a run folder): every
rank reads the same files. With as many ranks as the checkpoint's members, rank j takes
member j's stream and batch share: the run continues exactly as it would have (same
final model). With another count (a restart with the survivors), the unfinished
segments are dealt one by one to the rank with the fewest rows left, and the global
batch B is split as the elastic backend splits it after a shrink (B//M each, one more
for the first B%M ranks), so the global batch, and thus each update, stays B rows.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ..observe import read_json, write_json_atomic, write_text_atomic

FORMAT = "pslab-allreduce-checkpoint-1"


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{int(step):08d}"


def complete(manifest: Path) -> bool:
    """A manifest whose files are all there (the only kind ever written, unless deleted)."""
    info = read_json(manifest)
    return bool(info) and all((Path(manifest).parent / f).exists() for f in info.get("files", []))


def newest_complete(root: Path, pattern: str) -> Path | None:
    """The newest complete manifest in a checkpoints folder: the one LATEST names, else the
    last of `pattern` (zero-padded names sort by step) whose files are all there."""
    latest = root / "LATEST"
    if latest.exists():
        m = root / latest.read_text().strip()
        if m.exists() and complete(m):
            return m
    for m in sorted(root.glob(pattern), reverse=True):
        if complete(m):
            return m
    return None


def find(path) -> Path:
    """The manifest to resume from: a manifest file, a step folder, a checkpoints folder or
    a run folder (its newest complete checkpoint). Raises FileNotFoundError naming the key."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / "manifest.json").exists():
        return p / "manifest.json"
    for root in (p, p / "checkpoints"):
        m = newest_complete(root, "step-*/manifest.json")
        if m is not None:
            return m
    raise FileNotFoundError(f"backend.resume_from={path}: no complete allreduce checkpoint there "
                            "(a manifest.json, a checkpoints folder or a run folder)")


class Checkpointer:
    """Rank 0's side: is a checkpoint due after this step, and write it."""

    def __init__(self, cfg, rec):
        b = cfg.backend
        self.every = int(b.get("checkpoint_every", 0) or 0)
        self.every_s = float(b.get("checkpoint_every_s", 0) or 0)
        self.root = Path(rec.run_dir) / "checkpoints"
        self.rec, self.seed = rec, int(cfg.train.seed)
        self.last_t = time.time()
        self.written: list[int] = []
        self.seconds = 0.0

    @property
    def on(self) -> bool:
        return self.every > 0 or self.every_s > 0

    def due(self, step: int) -> bool:
        """Only rank 0 asks (it alone writes), so a seconds interval needs no agreement."""
        if self.every and step % self.every == 0:
            return True
        return bool(self.every_s) and time.time() - self.last_t >= self.every_s

    def write(self, tr) -> Path:
        """The trainer's state after its last completed step."""
        t0 = time.time()
        d = step_dir(self.root, tr.step)
        d.mkdir(parents=True, exist_ok=True)
        keys, W, S = model_arrays(tr.table)
        tmp = d / f".model.{os.getpid()}.tmp.npz"
        np.savez(tmp, keys=keys, W=W, S=S)
        os.replace(tmp, d / "model.npz")
        write_json_atomic(d / "manifest.json", {
            "format": FORMAT, "step": tr.step, "epoch": tr.epoch, "steps_in_epoch": tr.steps_in_epoch,
            "examples": tr.examples, "seed": self.seed, "batch": tr.batch, "files": ["model.npz"],
            "plan": plan_state(tr.plan), "world_size": tr.n_world, "t": time.time()})
        write_text_atomic(self.root / "LATEST", f"{d.name}/manifest.json\n")
        dt = time.time() - t0
        self.seconds += dt
        self.last_t = time.time()
        self.written.append(tr.step)
        self.rec.event("checkpoint", sync=True, step=tr.step, epoch=tr.epoch, seconds=round(dt, 6),
                       t_begin=t0, path=str(d))
        return d


def model_arrays(table):
    """(keys, W, S) of a replica: the whole arrays of a dense table, the used rows of a sparse one."""
    if hasattr(table, "index"):
        keys = table.keys()
        s = table.slots(keys, create=False)
        return keys, np.ascontiguousarray(table.W[s]), np.ascontiguousarray(table.S[s])
    return np.zeros(0, np.uint64), table.W, table.S


def plan_state(plan) -> dict:
    """Each member's unfinished row segments and batch share (JSON)."""
    return {"members": list(map(int, plan.members)), "sizes": list(map(int, plan.sizes)),
            "segments": [[list(map(int, s)) for s in st.unfinished()] for st in plan.streams]}


def load(path) -> dict:
    """The manifest (with "dir") and the model arrays of a checkpoint."""
    m = find(path)
    info = json.loads(m.read_text())
    if info.get("format") != FORMAT:
        raise SystemExit(f"backend.resume_from={path}: {m} is not an allreduce checkpoint "
                         "(a PS checkpoint resumes a backend=ps run)")
    z = np.load(m.parent / "model.npz")
    info.update(dir=str(m.parent), keys=z["keys"], W=z["W"], S=z["S"])
    return info


def restore(tr, info: dict, members: list[int]) -> None:
    """Put a loaded checkpoint into a fresh trainer (before its first step)."""
    from .elastic import Plan, split_batch

    if int(info["seed"]) != int(tr.cfg.train.seed) or int(info["batch"]) != tr.batch:
        raise SystemExit(f"backend.resume_from: checkpoint {info['dir']} was written with train.seed="
                         f"{info['seed']} train.batch_size={info['batch']}; resume with the same values")
    if hasattr(tr.table, "index"):
        tr.table.load(info["keys"], info["W"], info["S"])
    else:
        if info["W"].shape != tr.table.W.shape:
            raise SystemExit(f"backend.resume_from: checkpoint {info['dir']} holds a model of shape "
                             f"{info['W'].shape}, this run's is {tr.table.W.shape} (other data.hash_bits or model?)")
        tr.table.W[...] = info["W"]
        tr.table.S[...] = info["S"]
    tr.step, tr.epoch = int(info["step"]), int(info["epoch"])
    tr.steps_in_epoch, tr.examples = int(info["steps_in_epoch"]), int(info["examples"])
    saved = info["plan"]
    m = len(members)
    plan = Plan(tr.s.data, members, [[] for _ in range(m)], [0] * m)
    if m == len(saved["segments"]):
        # same count: rank j is member j (exact resume)
        for st, segs in zip(plan.streams, saved["segments"]):
            st.add([tuple(s) for s in segs])
        plan.sizes = list(saved["sizes"])
    else:
        for segs in saved["segments"]:
            for seg in segs:
                to = min(range(m), key=lambda i: (plan.streams[i].left, i))
                plan.streams[to].add([tuple(seg)])
        plan.sizes = split_batch(tr.batch, m)
    tr.plan = plan


def planned_steps(setup, n: int, batch: int, epochs: int) -> int:
    """Steps a run of n ranks plans (the fault plan's progress triggers): the batch split
    over n as every allreduce plan splits it (schedule.split_batch)."""
    from ..schedule import split_batch

    sizes = split_batch(batch, n)
    lanes = setup.lanes(0, n)
    per = max(-(-sum(setup.data.block_len(x) for x in lane) // b) for lane, b in zip(lanes, sizes))
    return per * epochs


__all__ = ["Checkpointer", "complete", "find", "load", "newest_complete", "planned_steps", "restore", "step_dir"]
