"""Goodput of a job: ETTR and where the rest of its wall time went, from the records.

    python -m pslab.launch -n 4 backend=allreduce                   # ettr, attempts 1
    python -m pslab.launch -n 4 --max-restarts 2 backend=allreduce backend.checkpoint_every=10 faults=kill_one_worker

ETTR (effective training time ratio; Kokolis et al., HPCA 2025) = productive time / the
job's wall time. Every backend reports the same fields, from the same records
(`training_started` and `checkpoint` events of rank 0 or the PS coordinator, the PS
servers' `shard_written`, the faults' `fault_injected`, every rank's detections and
`recovered` events, result.json's time):

- job wall (`job_wall_s`, ETTR's denominator): from the first attempt's first training
  step to the moment rank 0 wrote the last attempt's result (its final evaluation
  included). Start-up before the first step (MPI launch, data loading) is `startup_s`,
  the end after the result (MPI_Finalize, teardown) `finish_s`: both outside the ratio,
  the same for every backend and every attempt count. `rank_startup_s` is the ranks' own
  part of a start-up (the median rank's start to the first step, a mean over attempts):
  the part on a fault plan's clock, which starts with each rank (the simulator's exposure).
- `checkpoint_s`: time spent writing checkpoints whose work survived (allreduce: rank 0's
  write, which the others wait for; PS: per checkpoint clock, the slowest server's shard).
- `redone_s`: training time of a failed attempt after its last complete checkpoint (lost
  work: a restart does it again). A failed attempt with no checkpoint loses all of it.
- `detect_s`: from each fault (a kill or hang's `fault_injected` record) to its first
  detection by any rank (a failed collective, a PS peer notice, the step watchdog's
  timeout, an abort).
- `restart_s`: from the detection that ended an attempt to the next attempt's first
  training step: teardown, relaunch, data loading and checkpoint loading.
- `pause_s`: a failure the job survived without restarting (elastic shrink, PS failover):
  from its detection to the first step completed after it (the `recovered` record). For
  the PS this is an upper bound: under SSP/ASP the other workers go on meanwhile.
  Spans of several failures that overlap count once (checkpoint, then detection, then
  pause), so the parts add up to the job's wall time.
- `productive_s` = job wall - checkpoint - redone - detect - restart - pause: the time
  whose work is in the final model. A failed job has no final model: productive 0,
  ETTR 0, and all its training time is in `redone_s`.
"""
from __future__ import annotations

FAULT_ACTIONS = ("kill", "hang")
DETECTIONS = ("failure_detected", "peer_failed", "step_timeout", "fenced", "aborting", "unrecoverable",
              "watchdog", "rank_error")
FATAL = ("aborting", "unrecoverable", "watchdog", "rank_error")


def _t(e) -> float:
    return float(e.get("t", 0.0))


def checkpoints(events: list[dict]) -> list[tuple[float, float]]:
    """(time complete, seconds spent) of each complete checkpoint of an attempt."""
    out = []
    for e in events:
        if e.get("kind") == "checkpoint" and e.get("rank") == 0 and e.get("seconds") is not None:
            out.append((_t(e), float(e["seconds"])))  # allreduce: rank 0 wrote it, and timed it
    shard_s: dict[int, float] = {}
    for e in events:
        if e.get("kind") == "shard_written":
            c = int(e.get("clock", -1))
            shard_s[c] = max(shard_s.get(c, 0.0), float(e.get("seconds", 0.0)))
    for e in events:  # PS: the coordinator's manifest makes the clock's shards a checkpoint
        if e.get("kind") == "checkpoint" and e.get("seconds") is None and e.get("clock") is not None:
            out.append((_t(e), shard_s.get(int(e["clock"]), 0.0)))
    return sorted(out)


def timeline(events: list[dict], result: dict | None, t_launch: float, t_end: float) -> dict:
    """One attempt's times: launch, first training step, result (None: failed), end; its
    checkpoints; its survived failures (fault, detected, recovered); and, when it failed,
    the fault that ended it and when that was detected."""
    started = [_t(e) for e in events if e.get("kind") == "training_started" and e.get("rank") == 0]
    ranks = sorted(_t(e) for e in events if e.get("kind") == "rank_started")
    ok = bool(result) and result.get("status") == "completed"
    tl = {"t_launch": t_launch, "t_end": t_end, "t_train": min(started) if started else None,
          "t_ranks": ranks[len(ranks) // 2] if ranks else None,  # the median rank's start
          "t_done": float(result["t"]) if ok and result.get("t") else None, "ok": ok,
          "checkpoints": checkpoints(events), "survived": [], "t_fault": None, "t_detect": None}
    faults = sorted((e for e in events if e.get("kind") == "fault_injected" and e.get("action") in FAULT_ACTIONS),
                    key=_t)
    detections = sorted((e for e in events if e.get("kind") in DETECTIONS), key=_t)
    recovered = sorted((e for e in events if e.get("kind") == "recovered"), key=_t)
    fatal = [e for e in detections if e.get("kind") in FATAL]
    t_fatal = _t(fatal[0]) if fatal and not ok else None
    for f in faults:
        tf = _t(f)
        if t_fatal is not None and tf > t_fatal:
            continue
        det = next((_t(d) for d in detections if _t(d) >= tf), None)
        rec = next((_t(r) for r in recovered if _t(r) >= tf and r.get("failed_rank", f.get("rank")) == f.get("rank")),
                   None) or next((_t(r) for r in recovered if _t(r) >= tf), None)
        if rec is not None and (t_fatal is None or rec <= t_fatal):
            det = rec if det is None or det > rec else det
            tl["survived"].append((tf, det, rec))
        elif not ok:
            tl["t_fault"] = tf  # the last unrecovered fault before the end: the one that ended it
    if not ok:
        first_det = next((_t(d) for d in detections if tl["t_fault"] is None or _t(d) >= tl["t_fault"]), None)
        tl["t_detect"] = first_det if first_det is not None else t_end
        if tl["t_fault"] is None:
            tl["t_fault"] = tl["t_detect"]  # no fault record (a crash): its detection is all we know
    return tl


def _within(a: float, b: float, spans) -> float:
    """Seconds of [a, b] covered by the spans [x, y] (their union: two failures whose
    detections overlap cost the overlap once)."""
    cut = sorted((max(a, x), min(b, y)) for x, y in spans if min(b, y) > max(a, x))
    total, end = 0.0, a
    for x, y in cut:
        if y > end:
            total += y - max(x, end)
            end = y
    return total


def _split(a: float, b: float, *layers) -> list[float]:
    """Seconds of [a, b] in each layer of spans, each instant counted once, in the first
    layer that covers it (checkpoint, then detection, then pause)."""
    out, below, covered = [], [], 0.0
    for spans in layers:
        below = below + list(spans)
        now = _within(a, b, below)
        out.append(now - covered)
        covered = now
    return out


def goodput(tls: list[dict]) -> dict:
    """The job's goodput fields from its attempts' timelines (in order)."""
    parts = dict(productive_s=0.0, checkpoint_s=0.0, redone_s=0.0, detect_s=0.0, restart_s=0.0, pause_s=0.0)
    last = tls[-1]
    ok = last["ok"]
    t0 = next((tl["t_train"] for tl in tls if tl["t_train"] is not None), None)
    if t0 is None:  # never trained
        return {**{k: 0.0 for k in parts}, "ettr": 0.0, "job_wall_s": 0.0,
                "startup_s": round(last["t_end"] - tls[0]["t_launch"], 3), "finish_s": 0.0}
    cursor = None  # the detection that ended the previous attempt: restart time runs from it
    for tl in tls:
        s = tl["t_train"]
        if s is None:
            continue  # failed before training: its time stays in the running restart span
        if cursor is not None:
            parts["restart_s"] += max(0.0, s - cursor)
        end = tl["t_done"] if tl["ok"] else tl["t_fault"]
        end = max(s, end if end is not None else s)
        ck = [(t - d, t) for t, d in tl["checkpoints"] if s <= t <= end]
        saved = end if tl["ok"] else max([t for _, t in ck], default=s)
        surv = [(max(s, f), max(s, min(end, d)), max(s, min(end, r))) for f, d, r in tl["survived"] if f <= end]
        det_spans, pause_spans = [(f, d) for f, d, _ in surv], [(d, r) for _, d, r in surv]
        ck_in, det_in, pause_in = _split(s, saved, ck, det_spans, pause_spans)
        det_out, pause_out = _split(saved, end, det_spans, pause_spans)
        parts["checkpoint_s"] += ck_in
        parts["detect_s"] += det_in + det_out
        parts["pause_s"] += pause_in + pause_out
        parts["productive_s"] += max(0.0, (saved - s) - ck_in - det_in - pause_in)
        parts["redone_s"] += max(0.0, (end - saved) - det_out - pause_out)
        if not tl["ok"]:
            parts["detect_s"] += max(0.0, tl["t_detect"] - end)
            cursor = max(end, tl["t_detect"])
    t_stop = last["t_done"] if ok else last["t_end"]
    wall = max(0.0, t_stop - t0)
    if not ok:
        parts["redone_s"] += parts["productive_s"]  # no final model: nothing was productive
        parts["productive_s"] = 0.0
        if cursor is not None:
            parts["restart_s"] += max(0.0, t_stop - cursor)  # the last, failed, teardown
    out = {k: round(v, 3) for k, v in parts.items()}
    out["job_wall_s"] = round(wall, 3)
    out["ettr"] = round(parts["productive_s"] / wall, 4) if wall > 0 and ok else 0.0
    out["startup_s"] = round(t0 - tls[0]["t_launch"], 3)
    own = [tl["t_train"] - tl["t_ranks"] for tl in tls if tl["t_train"] is not None and tl.get("t_ranks") is not None]
    out["rank_startup_s"] = round(max(0.0, sum(own) / len(own)), 3) if own else None
    out["finish_s"] = round(max(0.0, last["t_end"] - t_stop), 3)
    return out
