"""Where results live, and loading them.

Layout written by the experiment scripts (`experiments/*.py`, through `save_run`):

    results/<experiment>/manifest.json          the sweep: preset, arms, skipped arms and why
    results/<experiment>/<arm>/<rep>/summary.json   the launcher's summary, verbatim
                                    run.json        the experiment's labels for the run
                                                    (experiment, arm, rep, n, overrides, params)
                                    metrics.jsonl   rank 0's evaluation time series
                                    events.jsonl    faults, failures, recoveries (rank_started kept)
                                    ranks.json      a digest per rank: role, start time, first
                                                    step records, seconds split, bytes, peak RSS
    results/success_rate/trials.jsonl            the fault engineer's trials (one line each)
    results/sim/*.json                           the simulator's calibration, validation, curves
    results/figures/*.png                        every figure

`load_runs(path)` returns one dict per run: summary.json merged with run.json (run.json's
keys win only where summary.json has none; the run's folder is `_dir`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..observe import json_default, read_json, read_jsonl, write_json_atomic  # noqa: F401  (re-exported)

SMALL_FILES = ("summary.json", "metrics.jsonl", "config.yaml")
MAX_EVENTS_BYTES = 200_000


def repo_root() -> Path:
    """The checkout pslab runs from (src layout: src/pslab/analysis -> three up)."""
    return Path(__file__).resolve().parents[3]


def results_root() -> Path:
    """results/ of the checkout, or $PSLAB_RESULTS."""
    env = os.environ.get("PSLAB_RESULTS")
    return Path(env).resolve() if env else repo_root() / "results"


def figures_dir() -> Path:
    """Where figures go: $PSLAB_FIGURES_DIR (tests point it at a temp dir), else results/figures."""
    env = os.environ.get("PSLAB_FIGURES_DIR")
    return Path(env).resolve() if env else results_root() / "figures"


def _resolve(path) -> Path:
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (results_root() / p).exists():
        p = results_root() / p
    return p


def load_runs(path, trials: bool = True) -> list[dict]:
    """Every run under `path` (a folder, or a name under results/ such as "traffic").

    One dict per summary.json found (recursively), merged with its run.json; plus, when
    `trials` and the folder holds trials.jsonl, one dict per trial line whose run folder
    is not already loaded (the line's own fields; `_trial` True). Sorted by folder."""
    root = _resolve(path)
    runs, seen = [], set()
    for s in sorted(root.rglob("summary.json")):
        summary = read_json(s)
        if not isinstance(summary, dict):
            continue
        meta = read_json(s.parent / "run.json") or {}
        run = dict(summary)
        for k, v in meta.items():
            if run.get(k) is None:
                run[k] = v
        run["_meta"] = meta
        run["_dir"] = str(s.parent)
        runs.append(run)
        seen.add(s.parent.resolve())
    if trials:
        for t in load_trials(root):
            d = t.get("run_dir")
            if d and (root / d).resolve() in seen:
                # the trial line carries the verdict (success): add it to the run
                for r in runs:
                    if Path(r["_dir"]).resolve() == (root / d).resolve():
                        r.update({k: v for k, v in t.items() if k not in r or r[k] is None})
                        r["success"] = t.get("success")
                        r["_trial"] = True
                continue
            runs.append({**t, "_trial": True, "_dir": str(root / d) if d else None})
    return runs


def load_trials(path) -> list[dict]:
    """The lines of trials.jsonl under `path` (the success-rate experiment), or []."""
    root = _resolve(path)
    p = root / "trials.jsonl" if root.is_dir() else root
    return read_jsonl(p)


def load_metrics(run, kind: str | None = "eval") -> list[dict]:
    """A run's metrics.jsonl (rank 0's time series), records of `kind` (None: all)."""
    d = run["_dir"] if isinstance(run, dict) else run
    if d is None:
        return []
    rows = read_jsonl(Path(d) / "metrics.jsonl")
    out = [r for r in rows if kind is None or r.get("kind") == kind]
    # the final evaluation is sometimes recorded twice (epoch end, run end): keep one
    dedup, last = [], None
    for r in out:
        key = (r.get("kind"), r.get("step"), r.get("logloss"))
        if key != last:
            dedup.append(r)
        last = key
    return dedup


def load_events(run, kind: str | None = None) -> list[dict]:
    d = run["_dir"] if isinstance(run, dict) else run
    if d is None:
        return []
    return [e for e in read_jsonl(Path(d) / "events.jsonl") if kind is None or e.get("kind") == kind]


def load_ranks(run) -> list[dict]:
    """The per-rank digest (ranks.json) saved with the run, or []."""
    d = run["_dir"] if isinstance(run, dict) else run
    return (read_json(Path(d) / "ranks.json") or []) if d else []


# --------------------------------------------------------------------------- saving


def rank_digest(run_dir) -> list[dict]:
    """A few hundred bytes per rank, from <run dir>/ranks/ and events.jsonl: enough for
    start-of-training times and per-role accounting without keeping the rank files."""
    run_dir = Path(run_dir)
    started = {e.get("rank"): e.get("t") for e in read_jsonl(run_dir / "events.jsonl")
               if e.get("kind") == "rank_started"}
    out = []
    ranks = set(started)
    for p in (run_dir / "ranks").glob("rank-*.metrics.jsonl"):
        ranks.add(int(p.name.split("-")[1].split(".")[0]))
    for r in sorted(x for x in ranks if x is not None):
        final = read_json(run_dir / "ranks" / f"rank-{r}.json") or {}
        steps = [m for m in read_jsonl(run_dir / "ranks" / f"rank-{r}.metrics.jsonl") if m.get("kind") == "step"]
        last = steps[-1] if steps else {}
        role = final.get("role") or (steps[0].get("role") if steps else None)
        out.append({
            "rank": r, "role": role, "index": final.get("index", last.get("index")),
            "t_started": started.get(r),
            "first_steps": [{"step": m.get("step"), "t": m.get("t")} for m in steps[:2]],
            "last_step": {"step": last.get("step"), "t": last.get("t")} if last else None,
            "steps_logged": [m.get("step") for m in steps],
            "step_t": [m.get("t") for m in steps],
            "wall_s": final.get("wall_s"),
            "seconds": final.get("seconds", last.get("seconds")),
            "bytes_sent": final.get("bytes_sent", last.get("bytes_sent")),
            "bytes_by_kind": final.get("bytes_by_kind", last.get("bytes_by_kind")),
            "peak_rss_bytes": final.get("peak_rss_bytes", last.get("peak_rss_bytes")),
            "finished": bool(final),
        })
    return out


def save_run(run_dir, dest, meta: dict) -> Path:
    """Copy the small records of a launched run into results (no logs, models or
    checkpoints): summary.json, metrics.jsonl, config.yaml, events.jsonl (capped), a rank
    digest, and run.json with the experiment's labels. Atomic per file; returns dest."""
    run_dir, dest = Path(run_dir), Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in SMALL_FILES:
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, dest / name)
    ev = run_dir / "events.jsonl"
    if ev.exists():
        data = ev.read_bytes()
        if len(data) > MAX_EVENTS_BYTES:
            keep = [e for e in read_jsonl(ev) if e.get("kind") != "step"][:2000]
            data = "".join(json.dumps(e) + "\n" for e in keep).encode()[:MAX_EVENTS_BYTES]
        (dest / "events.jsonl").write_bytes(data)
    write_json_atomic(dest / "ranks.json", rank_digest(run_dir))
    write_json_atomic(dest / "run.json", meta)
    return dest
