"""pslab.analysis: results/ as tables and figures, for the notebooks and the experiments.

    from pslab.analysis import load_runs, table, aggregate, figures
    runs = load_runs("consistency")                 # results/consistency/**/summary.json
    print(table(runs, ["arm", "rep", "status", "test_logloss", "wall_s"], sort=["arm", "rep"]))
    fig, path = figures.fig_consistency(runs)       # writes results/figures/consistency.png

Modules: `io` (where results live, loading and saving runs), `tables` (plain tables,
grouping, medians), `metrics` (per-run measures: time and examples to a target log-loss,
idle fraction, bytes per step, Wilson intervals), `comparisons` (one summary table per
comparison of BRIEF section 5), `figures` (one function per figure, PNGs written
atomically under results/figures/ or $PSLAB_FIGURES_DIR), `captions` (the conclusions
the numbers support, for notebooks and notebooks/FIGURES.md), `simulation` (pslab.sim
calibrated and validated on the measured results, curves to 10,000 workers),
`goodput_scale` (the headline: ETTR vs workers to 16,384 for the four contenders under each
hazard preset, its figure and its one-sentence conclusion).
"""
from . import captions, comparisons, figures, intervals, io, metrics, simulation, tables
from .io import (figures_dir, load_events, load_metrics, load_ranks, load_runs, load_trials, results_root,
                 save_run)
from .metrics import (bytes_per_step, eval_series, idle_fraction, success_rates, target_from,
                      time_to_target, train_start_t, wilson)
from .tables import Table, aggregate, get, group, median, table, where

__all__ = ["captions", "comparisons", "figures", "intervals", "io", "metrics", "simulation", "tables",
           "figures_dir", "load_events", "load_metrics", "load_ranks", "load_runs", "load_trials",
           "results_root", "save_run",
           "bytes_per_step", "eval_series", "idle_fraction", "success_rates", "target_from",
           "time_to_target", "train_start_t", "wilson",
           "Table", "aggregate", "get", "group", "median", "table", "where"]
