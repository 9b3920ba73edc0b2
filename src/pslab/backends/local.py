"""backend=local: the whole training in one process, the reference every distributed
backend must reproduce. With backend.lanes=L it builds each global batch exactly as an
L-rank run does (the next B/L rows of each of L lanes)."""
from __future__ import annotations

import time

import numpy as np

from ..data import Rows
from ..schedule import Stream
from ..optim import divisor
from ..store import apply_gradient, make_table
from .common import Setup, save_model


def run(cfg, comm, rec, make_injector) -> dict:
    if comm.size != 1:
        raise SystemExit(f"backend=local runs in one process; got {comm.size} ranks (use -n 1)")
    s = Setup.build(cfg)
    table = make_table(s.data.n_features, s.model, s.opt)
    n_lanes = int(cfg.backend.get("lanes", 1))
    b = s.lane_batch(n_lanes)
    eval_every = int(cfg.train.eval_every)
    injector = make_injector({"worker": 1, "rank": 1}, s.steps_per_epoch(n_lanes) * int(cfg.train.epochs))
    step, examples, step_times = 0, 0, []
    t_start = time.time()
    rec.event("training_started", step=0)  # the job's productive time starts here (launcher/ettr.py)
    for epoch in range(int(cfg.train.epochs)):
        lanes = [Stream(s.data, blocks) for blocks in s.lanes(epoch, n_lanes)]
        while True:
            rows = Rows.concat([lane.next(b) for lane in lanes])
            if len(rows) == 0:
                break
            t0 = time.perf_counter()
            with rec.acct.timed("compute"):
                keys, loss, grad = s.gradient(rows, table.gather)
                apply_gradient(table, keys, grad / divisor(s.opt, len(rows)))
            step_times.append(time.perf_counter() - t0)
            step += 1
            examples += len(rows)
            injector.on_step(step)
            if step % int(cfg.train.log_every) == 0:
                rec.metric("step", step=step, epoch=epoch, loss=loss / len(rows), examples=examples)
            if eval_every and step % eval_every == 0:
                rec.shared_metric("eval", step=step, epoch=epoch, examples=examples,
                                  elapsed_s=time.time() - t_start, **s.evaluate(table.gather))
        if not eval_every:
            rec.shared_metric("eval", step=step, epoch=epoch + 1, examples=examples,
                              elapsed_s=time.time() - t_start, **s.evaluate(table.gather))
    final = s.evaluate(table.gather)
    if cfg.run.save_model:
        keys = table.keys()
        save_model(rec.run_dir / "model.npz", keys, table.W[table.slots(keys, create=False)])
    return {"steps": step, "examples": examples, "train_s": time.time() - t_start,
            "rows_applied": examples, "rows_applied_max": examples,
            "rows_planned": s.data.n_train * int(cfg.train.epochs), "duplicates_dropped": 0,
            "lost_updates": 0, "replicas_identical": None, "rereplications": [],
            "step_time_s": float(np.median(step_times)) if step_times else None,
            "test_logloss": final["logloss"], "test_auc": final["auc"], "test_accuracy": final["accuracy"],
            "workers": 1, "servers": 0, "consistency": None, "ranks_alive_end": 1,
            "model_keys": len(table.keys()) if hasattr(table, "index") else table.n,
            "model_bytes": table.nbytes}
