"""The launcher's progress line, read from the records the ranks already write.

Ranks never print: each appends to its own `ranks/rank-R.{events,metrics}.jsonl` (a
`plan` event with its planned steps, a metric line every train.log_every steps with the
step, epoch, examples, loss and bytes sent). The launcher tails those files and shows

    [pslab] 0:12 | epoch 1/1 step 140/312 | 81.2k ex/s | loss 0.4711 | sent 12.3 MB | ranks 4/4 | last: hang rank 3 @4s

redrawn in place once a second on a terminal, a plain line every 5 s when piped.
`Countdown` gives the sweeps their count and ETA.
"""
from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from pathlib import Path

import psutil

from .watchdog import same_process

TTY_EVERY_S = 1.0
PIPE_EVERY_S = 5.0
RATE_WINDOW_S = 10.0
STALL_S = 10.0  # no new step record for this long: say so
# Records worth the "last:" field: faults, failures, recoveries and the ends of runs.
NOTABLE = ("fault_injected", "failure_detected", "peer_failed", "recovered", "server_failover", "backup_launched",
           "backup_unsupported", "fenced", "false_alarm", "rank_error", "aborting", "unrecoverable", "watchdog")


class Tail:
    """The new complete JSON lines of a file that other processes append to."""

    def __init__(self, path: Path):
        self.path, self.pos, self.rest = path, 0, b""

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()  # a line still being written
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line cut by a kill
        return out


def fmt_count(x: float) -> str:
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


def fmt_bytes(x: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= div:
            return f"{x / div:.1f} {unit}"
    return f"{x:.0f} B"


def fmt_clock(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def describe(e: dict, t0: float) -> str:
    """One notable record, in a few words."""
    kind, rank = e.get("kind"), e.get("rank")
    if kind == "fault_injected":
        what = f"{e.get('action')} rank {rank}" + (f" x{e.get('factor'):g}" if e.get("action") == "slow" else "")
    elif kind == "recovered":
        took = e.get("recovery_s")
        what = "recovered" + (f" in {took:.2f}s" if isinstance(took, (int, float)) else "")
    elif kind == "peer_failed":
        what = f"rank {rank} saw rank {e.get('peer')} fail"
    elif kind == "failure_detected":
        failed = e.get("failed_rank", e.get("dead_world_ranks"))
        what = f"rank {rank} detected a failure" + (f" of {failed}" if failed is not None else "")
    else:
        what = f"{kind.replace('_', ' ')} (rank {rank})"
    return f"{what} @{e.get('t', t0) - t0:.0f}s"


class RunState:
    """What the ranks' records say so far."""

    def __init__(self, run_dir: Path, n: int, backend: str, epochs: int, t0: float):
        self.ranks_dir = Path(run_dir) / "ranks"
        self.n, self.backend, self.epochs, self.t0 = n, backend, epochs, t0
        self.tails: dict[Path, Tail] = {}
        self.started: dict[int, dict] = {}   # rank -> its rank_started record
        self.planned = 0
        self.plan_t = 0.0                    # when the first rank recorded its plan
        self.latest: dict[int, dict] = {}    # rank -> its last metric record with a step
        self.sent: dict[int, int] = {}       # rank -> bytes it sent, from its last record
        self.last_event: dict | None = None
        self.samples: list[tuple[float, int]] = []  # (record time, examples so far) at each change
        self.host = socket.gethostname()

    def poll(self) -> None:
        for path in sorted(self.ranks_dir.glob("rank-*.jsonl")):
            tail = self.tails.setdefault(path, Tail(path))
            for rec in tail.read():
                self._take(rec)

    def _take(self, rec: dict) -> None:
        kind, rank = rec.get("kind"), rec.get("rank")
        if kind == "rank_started":
            self.started[rank] = rec
        elif kind == "plan":
            self.planned = max(self.planned, int(rec.get("planned_steps") or 0))
            self.plan_t = max(self.plan_t, rec.get("t", 0.0))
        elif kind in NOTABLE:
            self.last_event = rec
        else:
            if "step" in rec and "examples" in rec:
                self.latest[rank] = rec
                examples = self.examples()
                if not self.samples or examples != self.samples[-1][1]:
                    self.samples.append((rec.get("t", 0.0), examples))
            if rec.get("bytes_sent") is not None:  # servers count bytes too, not examples
                self.sent[rank] = int(rec["bytes_sent"])

    def examples(self) -> int | None:
        """Examples trained so far. Allreduce and local ranks count every rank's rows (the
        global batch), PS workers only their own."""
        counts = [int(r["examples"]) for r in self.latest.values() if r.get("examples") is not None]
        if not counts:
            return None
        return sum(counts) if self.backend == "ps" else max(counts)

    def rate(self, now: float) -> float | None:
        """Examples per second over the last RATE_WINDOW_S, up to now (so a stalled run
        drops towards 0)."""
        if len(self.samples) < 2:
            return None
        before = [s for s in self.samples if s[0] <= now - RATE_WINDOW_S]
        t_ref, ex_ref = before[-1] if before else self.samples[0]
        return (self.samples[-1][1] - ex_ref) / max(1e-3, now - t_ref)

    def ranks(self) -> str:
        """How many ranks are alive, by the pids of their rank_started records (a rank on
        another host counts as alive: its pid means nothing here), and how many of the
        others are stopped (SIGSTOPped: hung)."""
        if len(self.started) < self.n:
            return f"ranks {len(self.started)}/{self.n} started"
        alive = stopped = 0
        for rec in self.started.values():
            if rec.get("host") != self.host:
                alive += 1
                continue
            if not same_process(rec.get("pid"), rec.get("created")):
                continue  # gone (or its pid reused)
            try:
                status = psutil.Process(int(rec["pid"])).status()
            except psutil.Error:
                continue
            if status == psutil.STATUS_STOPPED:
                stopped += 1
            else:
                alive += 1
        return f"ranks {alive}/{self.n}" + (f" ({stopped} stopped)" if stopped else "")

    def finished(self) -> str:
        """After the run: how many ranks left their final record (ranks/rank-<i>.json);
        whether their processes are alive no longer says anything."""
        done = sum(1 for _ in self.ranks_dir.glob("rank-*.json"))
        return f"ranks {done}/{self.n} finished"

    def line(self, now: float, final: bool = False) -> str:
        parts = [f"[pslab] {fmt_clock(now - self.t0)}"]
        if not self.latest and not self.planned:
            parts.append("starting")
        else:  # training: the ranks recorded their plan, maybe steps
            newest = max(self.latest.values(), key=lambda r: r.get("t", 0.0), default={"t": self.plan_t})
            step = max((int(r["step"]) for r in self.latest.values()), default=0)
            epoch = int(newest.get("epoch") or 0) + 1
            parts.append(f"epoch {min(epoch, self.epochs)}/{self.epochs} step {step}"
                         + (f"/{self.planned}" if self.planned else ""))
            rate = self.rate(now)
            parts.append(f"{fmt_count(rate) if rate is not None else '-'} ex/s")
            losses = [float(r["loss"]) for r in self.latest.values() if r.get("loss") is not None]
            if losses:
                parts.append(f"loss {sum(losses) / len(losses):.4f}")
            if self.sent:
                parts.append(f"sent {fmt_bytes(sum(self.sent.values()))}")
            quiet = now - newest.get("t", now)
            if quiet > STALL_S:
                parts.append(f"no step for {quiet:.0f}s")
        parts.append(self.finished() if final else self.ranks())
        if self.last_event is not None:
            parts.append(f"last: {describe(self.last_event, self.t0)}")
        return " | ".join(parts)


class Progress:
    """Shows RunState's line: redrawn in place on a terminal, a plain line otherwise."""

    def __init__(self, state: RunState, stream=None):
        self.state = state
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = TTY_EVERY_S if self.tty else PIPE_EVERY_S
        self.shown_at = time.time()  # the first line comes one interval after the start
        self.drawn = False

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if now - self.shown_at < self.every:
            return
        self.shown_at = now
        self.state.poll()
        self.show(self.state.line(now))

    def show(self, line: str) -> None:
        try:
            if self.tty:
                width = shutil.get_terminal_size((100, 20)).columns - 1  # a wrapped line cannot be redrawn
                self.stream.write("\r" + line[:width] + "\x1b[K")
                self.drawn = True
            else:
                self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the terminal is gone (SIGHUP): nothing to show it on

    def close(self, now: float | None = None) -> None:
        """Show the run's final state (a run shorter than one interval would otherwise show
        none), then end the redrawn line, so what follows starts on a line of its own."""
        try:
            self.state.poll()
            self.show(self.state.line(time.time() if now is None else now, final=True))
        except OSError:
            pass  # the run dir is gone: nothing to report
        if self.drawn:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self.drawn = False


class Countdown:
    """A sweep's count of launches and its ETA (the mean time of the launches so far)."""

    def __init__(self, total: int):
        self.total, self.done, self.t0 = total, 0, time.time()

    def tick(self) -> str:
        """Count one launch done; '3/40, ETA 7:30'."""
        self.done += 1
        left = self.total - self.done
        eta = (time.time() - self.t0) / self.done * left
        return f"{self.done}/{self.total}" + (f", ETA {fmt_clock(eta)}" if left else ", done")
