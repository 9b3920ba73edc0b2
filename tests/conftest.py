"""Shared test helpers. MPI tests run the launcher in a subprocess with a timeout and
assert on the JSON records the run leaves (summary.json, events.jsonl), never on the
ranks' stdout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # Parsed-data cache for this session only (ranks started by the launcher inherit it).
    if "PSLAB_CACHE" not in os.environ:
        import tempfile
        os.environ["PSLAB_CACHE"] = tempfile.mkdtemp(prefix="pslab-test-cache-")


class Run:
    def __init__(self, run_dir: Path, proc: subprocess.CompletedProcess):
        self.dir = run_dir
        self.proc = proc
        self.summary = json.loads((run_dir / "summary.json").read_text())

    def events(self, kind: str | None = None) -> list[dict]:
        out = []
        p = self.dir / "events.jsonl"
        if p.exists():
            out = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        return [e for e in out if kind is None or e.get("kind") == kind]

    def metrics(self) -> list[dict]:
        p = self.dir / "metrics.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []

    def model(self) -> tuple[np.ndarray, np.ndarray]:
        z = np.load(self.dir / "model.npz")
        return z["keys"], z["W"]

    def rank_records(self) -> dict[int, dict]:
        out = {}
        for p in (self.dir / "ranks").glob("rank-*.json"):
            out[int(p.name.split("-")[1].split(".")[0])] = json.loads(p.read_text())
        return out

    def __getitem__(self, key):
        return self.summary[key]


@pytest.fixture
def launch(tmp_path):
    """launch(n, *overrides, deadline=120) -> Run, via `python -m pslab.launch` in a subprocess."""
    counter = iter(range(1000))

    def _launch(n: int, *overrides: str, deadline: float = 120, timeout: float | None = None) -> Run:
        run_dir = tmp_path / f"run{next(counter)}"
        cmd = [sys.executable, "-m", "pslab.launch", "-n", str(n), "--run-dir", str(run_dir),
               "--deadline", str(deadline), *overrides]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or deadline + 60,
                              cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert (run_dir / "summary.json").exists(), f"no summary.json; launcher said:\n{proc.stdout}\n{proc.stderr}"
        return Run(run_dir, proc)

    return _launch
