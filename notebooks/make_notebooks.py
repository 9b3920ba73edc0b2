"""Write the notebooks of notebooks/ (the .ipynb files are committed; this script is how
they were made, and remakes them after an edit here).

    .venv/bin/python notebooks/make_notebooks.py            # write every notebook (no outputs)
    .venv/bin/python notebooks/make_notebooks.py --execute  # and run them, keeping text and table outputs
                                                            # (figures are written to results/figures)

Every notebook reads results/ through pslab.analysis and only plots: no training. Each
shows the comparison's table, writes its figure(s) as PNG (results/figures, or
$PSLAB_FIGURES_DIR) and prints the caption-level conclusion computed from the numbers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
from IPython.display import Image, display
from pslab.analysis import captions, figures, load_runs, results_root, table
from pslab.analysis import comparisons as C
from pslab.analysis.io import read_json

RESULTS = results_root()


def runs_of(name):
    d = RESULTS / name
    runs = load_runs(d) if d.exists() else []
    manifest = read_json(d / "manifest.json") or {}
    skipped = {a["label"]: a["skipped"] for a in manifest.get("arms", []) if a.get("skipped")}
    print(f"results/{name}: {len(runs)} runs, preset {manifest.get('preset')!r}, "
          f"commit {manifest.get('commit')}, {manifest.get('finished', 'not run yet')}")
    for arm, why in skipped.items():
        print(f"  skipped {arm}: {why}")
    return runs, manifest
"""

NOTEBOOKS = {
    "00_goodput": {
        "title": "0. Goodput (ETTR) and success rate under kills and hangs (the headline)",
        "intro": """\
**Question.** Nobody runs a large synchronous job without checkpoints today (Llama 3,
OPT-175B and MegaScale restart automatically from the last one). Under one seeded per-rank
hazard of kills and hangs, rank 0 at risk too, what share of the wall time is productive
(ETTR) and what share of jobs finish, for classic allreduce restarted from scratch,
classic allreduce with checkpoint-restart at Young/Daly's interval, elastic allreduce
(ULFM) and the parameter server (R=2)? Anchors: Llama 3 and MegaScale report ETTR above
90%; Young (1974) / Daly (2006): checkpoint every sqrt(2 C M).

**Data.** `results/goodput/trials.jsonl` (experiments/goodput.py --preset full: 20+
paired trials a cell), `cells.json` next to it. Rerun: `.venv/bin/python
experiments/goodput.py --preset full` (resumes).""",
        "cells": [
            """\
from pslab.analysis.io import read_jsonl

trials = read_jsonl(RESULTS / "goodput" / "trials.jsonl") or read_jsonl(RESULTS / "goodput_small" / "trials.jsonl")
meta = read_json(RESULTS / "goodput" / "meta.json") or {}
print(f"{len(trials)} trials; hazard {meta.get('rate_per_s')} per rank per second; restarts by "
      f"{meta.get('restarts_by')}; skipped: {meta.get('skipped')}")
cells = C.goodput_cells(trials)
cells""",
            """\
fig, path = figures.fig_goodput(trials)
display(Image(filename=str(path)))""",
            "print(captions.goodput(cells))",
        ],
        "outro": """\
ETTR = productive training time / (productive + checkpoint + restart + redone +
detection time), start-up of the first attempt left out; a job that never finishes
counts 0. Intervals: Wilson for rates; for ETTR means, stratified by whether a fault
struck (pslab.analysis.intervals.ettr_interval); the caption
ranks two contenders only where their intervals do not overlap.""",
    },
    "01_success_rate": {
        "title": "1. Job success rate vs number of workers (the headline)",
        "intro": """\
**Question.** Under a per-rank failure hazard, what fraction of jobs finish on classic MPI
allreduce (any death kills the job), elastic allreduce (ULFM: revoke, shrink, go on) and
the parameter server (failover)? The deck: *the MPI system finished 30% of its jobs above
1000 workers*; Li et al. (OSDI'14, Table 1): 7.8% / 13.7% / 24.7% of jobs failed at
~100 / 1,000 / 10,000 machine-hours.

**Data.** `results/success_rate/trials.jsonl` (experiments/success_rate.py, owned by the
fault harness) for the measured points, `results/sim/curves.json`
(experiments/simulate.py) for the simulated curves. Rerun:
`.venv/bin/python experiments/success_rate.py && .venv/bin/python experiments/simulate.py`.""",
        "cells": [
            """\
from pslab.analysis import simulation as S
from pslab.analysis import success_rates

trials = S.success_trials(RESULTS)
sim = S.load_sim(RESULTS)
print(f"{len(trials)} trials")
table(success_rates(trials, by=("backend_key", "ranks", "workers")),
      ["backend_key", "ranks", "workers", "trials", "successes", "rate", "ci_low", "ci_high"],
      sort=["backend_key", "ranks"], title="measured success rate (Wilson 95%)")""",
            """\
fig, path = figures.fig_success_rate(trials, sim["curves"])
display(Image(filename=str(path)))""",
            "print(captions.success_rate(trials, sim['curves']))",
        ],
        "outro": """\
Left: the measured points with 95% Wilson intervals, and the simulator (calibrated on
these trials and the recovery runs) under the same accelerated hazard, carried to 10,000
workers. Right: the same calibrated job model under production-scale hazards: the per-rank
Weibull that reproduces Li et al.'s table (solid; the classic curve passes through the
table's points by construction, the question is what elastic allreduce and the PS do under
the same failures) and the deck's constant rate (dashed; 30% at 1000 workers by
construction).""",
    },
    "02_consistency": {
        "title": "2. BSP vs SSP(s) vs ASP with one slowed worker",
        "intro": """\
**Question.** With one worker slowed 3x, how much sooner do bounded staleness (SSP) and
no synchronization (ASP) reach a target loss than bulk-synchronous training, and what does
the staleness cost? OSDI'14: workers idle 50% at delay 0 and 1.7% at delay 16; the best
delay (8) reaches the target 1.6x faster.

**Data.** `results/consistency/` (experiments/consistency.py; arms share
conf/experiment/consistency.yaml). Target: the fault-free BSP final log-loss + 1%.""",
        "cells": [
            "runs, manifest = runs_of('consistency')\nC.consistency_rows(runs)",
            "fig, path = figures.fig_consistency(runs)\ndisplay(Image(filename=str(path)))",
            "print(captions.consistency(runs))",
        ],
        "outro": """\
Times are seconds since the workers' first step (extrapolated from their step records),
to the first evaluation at or below the target; examples and steps are what the workers
had done at that moment (from their own records: the coordinator evaluates a little after
the clock it names). On 2 oversubscribed cores a BSP clock costs tens of milliseconds of
synchronization, which is most of what SSP and ASP save here.""",
    },
    "03_traffic": {
        "title": "3. Bytes per step: dense vs sparse allreduce vs PS, and compression",
        "intro": """\
**Question.** How many bytes does one step put on the wire with a dense allreduce (the
whole model, every step), a sparse allgather of touched keys, and PS pull/push; and how
much do fp16 values, delta-coded keys, key caching and the KKT filter save? OSDI'14: key
caching ~50%, KKT filter >93% of features, 40x (server) / 12x (worker) less traffic.

**Data.** `results/traffic/` (experiments/traffic.py), data=synthetic and
data=criteo_sample, two workers in every arm.""",
        "cells": [
            "runs, manifest = runs_of('traffic')\nC.traffic_rows(runs)",
            "fig, path = figures.fig_traffic(runs)\ndisplay(Image(filename=str(path)))",
            "print(captions.traffic(runs))",
        ],
        "outro": """\
Bytes are counted by the backends where they are sent (all ranks, all message kinds);
`measured_factor` is the PS's own count of the bytes a switch saved (bytes without it /
bytes with it). `auc_change` is against the PS run with the same optimizer.""",
    },
    "04_recovery": {
        "title": "4. Recovery after a kill",
        "intro": """\
**Question.** When a rank is SIGKILLed halfway through training, how long until training
goes on, how much wall time is lost, and how many updates? PS replica promotion (R=2), PS
checkpoint restore (R=1), PS worker failover, ULFM shrink (elastic allreduce), and classic
MPI (the job fails; recovering means a full rerun). OSDI'14: a server recovers in 0.8 s.

**Data.** `results/recovery/` (experiments/recovery.py), each mechanism next to the same
layout run fault-free.""",
        "cells": [
            "runs, manifest = runs_of('recovery')\nC.recovery_rows(runs)",
            "skipped = {a['label']: a['skipped'] for a in manifest.get('arms', []) if a.get('skipped')}\n"
            "fig, path = figures.fig_recovery(runs, skipped=skipped)\ndisplay(Image(filename=str(path)))",
            "print(captions.recovery(runs, manifest))",
        ],
        "outro": """\
Recovery time is the backend's record from the fault to the first completed step after it;
time lost is the median wall time with the kill minus the fault-free median (for classic
MPI, the failed run's wall time, after which the job has to be run again).""",
    },
    "05_stragglers": {
        "title": "5. Stragglers: waiting vs bounded staleness vs backup instances",
        "intro": """\
**Question.** One worker is slowed 3x (and, in a second set of arms, 10x). How much does
waiting for it (BSP, synchronous allreduce) cost, and how much do bounded staleness (SSP),
no synchronization (ASP) and KunPeng's backup instances (on ASP: an idle worker takes over
the straggler's remaining rows) win back? KunPeng: backup instances gain 10-20%.

Note: the straggler fault sleeps (factor - 1) x the rank's own step time; the PS measures
a step including its pull and push, the allreduce backend its compute only, so "10x" slows
a PS worker more than an allreduce rank.

**Data.** `results/stragglers/` (experiments/stragglers.py).""",
        "cells": [
            "runs, manifest = runs_of('stragglers')\nC.straggler_rows(runs)",
            "skipped = '; '.join(a['label'] for a in manifest.get('arms', []) if a.get('skipped')) or None\n"
            "fig, path = figures.fig_stragglers(runs, skipped=skipped)\ndisplay(Image(filename=str(path)))",
            "print(captions.stragglers(runs, manifest))",
        ],
        "outro": """\
Slowdowns are against the same backend without the straggler, measured in the same sweep;
gains are against waiting (BSP) with the straggler.""",
    },
    "06_scalability": {
        "title": "6. Model scalability: memory per process and the largest model",
        "intro": """\
**Question.** With one model replica per rank (allreduce), every process must hold the
whole model and its optimizer state; a PS shards it over S servers. How much memory does
each process need, and what is the largest model that fits a per-process budget? The deck:
"multiple servers vs single server".

**Data.** `results/scalability/` (experiments/scalability.py): dense allreduce with growing
`data.hash_bits`, sparse allreduce and the PS with 64-bit keys and a growing key count.
Budget stated: 2 GiB per process.""",
        "cells": [
            "runs, manifest = runs_of('scalability')\nBUDGET = 2 * C.GIB\nC.scalability_points(runs)",
            "C.largest_model(runs, BUDGET)",
            "fig, path = figures.fig_scalability(runs, budget_bytes=BUDGET)\ndisplay(Image(filename=str(path)))",
            "print(captions.scalability(runs, BUDGET))",
        ],
        "outro": """\
Peak RSS is each process's getrusage maximum (Python, numpy and MPI included: the fitted
intercept). The largest model is a straight-line extrapolation of the measured points to
the budget: bytes per parameter times parameters, plus the fixed cost.""",
    },
    "07_simulator": {
        "title": "7. The simulator: calibration, validation, and 10,000 workers",
        "intro": """\
**What it is.** `pslab.sim`: a Monte Carlo + analytic model of a job with N workers (and S
servers), per-rank hazards (constant, Weibull), per-step times, and each backend's response
to a failure. Its parameters are fitted to the measured runs (success-rate trials and
recovery runs); at the measured sizes its predictions must fall inside the measured 95%
intervals (tests/test_sim_validation.py checks that on the committed results).

How the measured runs are mapped onto the simulator (`pslab.analysis.simulation`):
- one calibration per measured job size for the validation: on one oversubscribed 2-core
  machine a 16-rank job's steps are several times slower than a 4-rank job's, which the
  job model (a worker's step time does not depend on N) does not express; the curves
  extrapolate from the smallest size, the closest to one worker per core;
- a job's exposure is the ranks' lifetime (first rank start to completion), not the
  launcher's wall time: a rank's hazard clock starts when the rank starts;
- the trials spare rank 0; the simulator puts every rank at risk, so the hazard is
  restated as the equivalent rate over all ranks (exact for classic allreduce);
- the PS is extrapolated with the layout of the largest measured PS job (R = 2).

**Data.** `results/sim/` (experiments/simulate.py).""",
        "cells": [
            """\
from pslab.analysis import simulation as S
from pslab.sim import ANCHORS

sim = S.load_sim(RESULTS)
cal = sim["calibration"]
print("hazard (pooled MLE):", cal.get("hazard"), "-", cal.get("hazard_source"))
print("curves:", cal.get("curves_from"))
for n, c in (cal.get("by_size") or {}).items():
    print(f"  {n} ranks: " + "; ".join(f"{k}: {v}" for k, v in (c.get("notes") or {}).items()))
table([{"backend": k, **v} for k, v in (cal.get("backends") or {}).items()],
      ["backend", "runs", "step_time", "overhead_s", "steps", "recovery_s", "server_recovery_s",
       "staleness_cost", "replication"], title="calibrated parameters")""",
            """\
table(sim["validation"], ["backend", "ranks", "workers", "hazard", "runs", "measured_successes",
                          "measured_rate", "measured_ci", "simulated_rate", "inside"],
      title="validation: simulated vs measured success rate")""",
            "fig, path = figures.fig_sim_validation(sim['validation'])\ndisplay(Image(filename=str(path)))",
            "fig, path = figures.fig_sim_curves(sim['curves'])\ndisplay(Image(filename=str(path)))",
            "print(captions.simulator(sim['validation']))\n"
            "table([a.__dict__ for a in ANCHORS], ['key', 'comparison', 'value', 'unit', 'claim'], "
            "title='published anchors')",
        ],
        "outro": """\
The classic curve under Li et al.'s law goes through the table by construction (the law was
fitted to it); what the simulator adds is the elastic and PS curves under the same
failures, with recovery costs measured here.""",
    },
}


def build(name: str, spec: dict) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    cells = [new_markdown_cell(f"# {spec['title']}\n\n{spec['intro']}"), new_code_cell(SETUP)]
    cells += [new_code_cell(src) for src in spec["cells"]]
    cells.append(new_markdown_cell(spec["outro"]))
    nb.cells = cells
    return nb


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--execute", action="store_true", help="run every notebook after writing it")
    args = ap.parse_args(argv)
    for name, spec in NOTEBOOKS.items():
        nb = build(name, spec)
        path = HERE / f"{name}.ipynb"
        nbformat.validate(nb)
        if args.execute:
            from nbclient import NotebookClient
            NotebookClient(nb, timeout=300, kernel_name="python3",
                           resources={"metadata": {"path": str(HERE)}}).execute()
            for c in nb.cells:  # keep the committed files small: text and tables, no images inline
                if c.cell_type == "code":
                    c.outputs = [o for o in c.outputs
                                 if o.get("output_type") == "stream" or not any(
                                     k.startswith("image/") for k in o.get("data", {}))]
        tmp = path.with_suffix(".ipynb.tmp")
        nbformat.write(nb, tmp)
        tmp.replace(path)
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
