"""A fault plan belongs to the job, not to one attempt of it.

    python -m pslab.launch -n 4 --max-restarts 2 backend=allreduce backend.checkpoint_every=10 faults=kill_one_worker

With --max-restarts the launcher runs the job as attempts (pslab.launcher.restart), each
an mpirun of its own in `<job dir>/attempts/<i>/`, and before each one writes
`<job dir>/job.json` (temp + rename; only the launcher writes it):

    {"attempt": i, "fired": [fault ids fired in earlier attempts], "clock_offset_s": X}

Every rank reads it at start (config key run.job_dir), so that
- an event that fired in an earlier attempt does not fire again (ids: the event's index
  in faults.events, or "hazard-r<rank>" for a rank's hazard draw);
- time triggers (elapsed_s, hazards) run on the job's clock: seconds this rank has run
  plus X, the earlier attempts' up time (first rank start to the detection that ended
  the attempt). Time between attempts (teardown, relaunch) is not on it: a failure law
  describes ranks that run, and no fault can hit a job that is down. A fault that fired
  during a teardown (after that detection, in a rank not ended yet) is not in "fired":
  it is due again in the next attempt, at the same time of the job's clock (had it
  stayed fired, the next attempt would miss it; had the clock run through the teardown,
  faults due then would all strike the next attempt at its start).
Without run.job_dir (no restarts) nothing changes: each rank's own start is the clock.
"""
from __future__ import annotations

from pathlib import Path

from ..observe import read_json, write_json_atomic

JOB_FILE = "job.json"


def read_job(job_dir) -> dict:
    """{"attempt", "fired" (a set), "clock_offset_s"}; an empty state without a job dir."""
    d = read_json(Path(job_dir) / JOB_FILE) if job_dir else None
    d = d or {}
    return {"attempt": int(d.get("attempt", 0)), "fired": set(d.get("fired", [])),
            "clock_offset_s": float(d.get("clock_offset_s", 0.0))}


def write_job(job_dir, attempt: int, fired, clock_offset_s: float) -> None:
    """The launcher's side, before attempt `attempt` starts."""
    write_json_atomic(Path(job_dir) / JOB_FILE, {"attempt": int(attempt), "fired": sorted(fired, key=str),
                                                 "clock_offset_s": round(float(clock_offset_s), 6)})


def fired_ids(events: list[dict]) -> set:
    """Ids of the faults an attempt's records say fired."""
    return {e["fault_id"] for e in events if e.get("kind") == "fault_injected" and e.get("fault_id") is not None}
