"""Do two reproductions rank the same way? Every ranking a caption may state, from two
results folders, side by side.

    .venv/bin/python experiments/compare_rankings.py results/ /path/to/other/results/
    .venv/bin/python experiments/compare_rankings.py results/ other/ --strict   # one-sided counts too

A caption states a direction only where a 95% interval excludes "no difference" (a
paired ratio or gain by at least intervals.MARGIN; pslab.analysis.intervals), and
"within 2% of no difference" only where the interval lies inside that margin; this lists
each claim as + / - (its direction), = (equivalent) or ? (no claim: an interval across
the margin's edge, or two contenders' intervals that overlap), for:
- consistency: each arm's examples and wall time to the target log-loss vs BSP;
- stragglers: each arm's slowdown against no straggler, its gain against waiting (BSP)
  and backup instances' gain against ASP without them;
- goodput (results/goodput and make reproduce's results/goodput_small): at each size,
  ETTR and success rate of every pair of contenders.
Two runs agree on a claim when they make the same one; a direction in one run against
"within the margin" in the other, or against the opposite direction, contradicts; a claim
one run makes and the other cannot tell (?, or overlapping contenders) is one-sided.
Exit code 1 on a contradiction (with --strict, also on a one-sided claim), else 0.
"""
from __future__ import annotations

import argparse
import sys
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pslab.analysis import comparisons as C  # noqa: E402
from pslab.analysis import intervals as I  # noqa: E402
from pslab.analysis.io import load_runs, load_trials  # noqa: E402


UNDECIDED = "?"  # an interval across the margin's edge: neither a direction nor equivalence


def direction(iv, null: float) -> int | str | None:
    """+1 / -1 where the interval lies above / below `null` by the captions' margin, 0 where
    it lies inside the margin (equivalent), UNDECIDED where it straddles an edge, None
    without an interval."""
    if not iv or None in iv:
        return None
    if I.excludes(iv, null):
        return 1 if iv[0] > null else -1
    return 0 if I.equivalent(iv, null) else UNDECIDED


def versus(a, b) -> int | str | None:
    """+1 if interval a lies above b, -1 below, UNDECIDED if they overlap (no claim), None
    if one is missing."""
    if not a or not b or None in (*a, *b):
        return None
    if not I.separated(a, b):
        return UNDECIDED
    return 1 if a[0] > b[1] else -1


def claims(results: Path) -> dict[str, int | str | None]:
    out: dict[str, int | str | None] = {}
    if (results / "consistency").exists():
        for r in C.consistency_rows(load_runs(results / "consistency")):
            if r["arm"] != "bsp":
                out[f"consistency {r['arm']}: examples to target vs BSP"] = direction(r.get("examples_vs_bsp_ci"), 1.0)
                out[f"consistency {r['arm']}: time to target vs BSP"] = direction(r.get("time_vs_bsp_ci"), 1.0)
    if (results / "stragglers").exists():
        for r in C.straggler_rows(load_runs(results / "stragglers")):
            for key, null in (("train_time_vs_fault_free_ci", 1.0), ("time_to_target_gain_vs_wait_ci", 0.0),
                              ("train_time_gain_vs_nobackup_ci", 0.0)):
                if r.get(key) is not None:
                    out[f"stragglers {r['arm']}: {key.removesuffix('_ci')}"] = direction(r[key], null)
    for name in ("goodput", "goodput_small"):  # the committed run; the one make reproduce makes
        trials = load_trials(results / name) if (results / name / "trials.jsonl").exists() else []
        by_size: dict[int, list[dict]] = {}
        for cell in C.goodput_cells(trials):
            by_size.setdefault(cell["ranks"], []).append(cell)
        for n, cells in sorted(by_size.items()):
            for x, y in combinations(cells, 2):
                pair = f"{x['contender']} vs {y['contender']}"
                out[f"{name} {n} ranks: ETTR {pair}"] = versus(x["ettr_ci"], y["ettr_ci"])
                out[f"{name} {n} ranks: success {pair}"] = versus(x["success_ci"], y["success_ci"])
    return out


def compare(a: dict, b: dict) -> dict[str, list[str]]:
    """same: both runs make the same claim (a direction, equivalence, or none); contradicts:
    one claims a direction the other reverses or shows to be within the margin; one-sided:
    one claims, the other cannot tell; in one run only: one run has no interval at all."""
    verdict: dict[str, list[str]] = {"same": [], "one-sided": [], "contradicts": [], "in one run only": []}
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        ranked = {x, y} & {1, -1}
        if x is None or y is None:
            verdict["in one run only" if (x is None) != (y is None) else "same"].append(k)
        elif x == y:
            verdict["same"].append(k)
        elif ranked == {1, -1} or (ranked and 0 in (x, y)):
            verdict["contradicts"].append(k)
        else:
            verdict["one-sided"].append(k)
    return verdict


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    ap.add_argument("--strict", action="store_true", help="a one-sided claim counts as a difference too")
    args = ap.parse_args(argv)
    for d in (args.first, args.second):
        if not d.is_dir():
            ap.error(f"{d}: no such results folder")
    a, b = claims(args.first), claims(args.second)
    v = compare(a, b)
    sign = {1: "+", -1: "-", 0: "=", UNDECIDED: "?", None: "."}
    for kind in ("contradicts", "one-sided", "in one run only"):
        for k in v[kind]:
            print(f"{kind:>16}  {sign[a.get(k)]} {sign[b.get(k)]}  {k}")
    ranked = sum(1 for k in v["same"] if a.get(k) in (1, -1))
    within = sum(1 for k in v["same"] if a.get(k) == 0)
    print(f"{len(v['same'])} claims the same ({ranked} of them a ranking, {within} within the margin in both, "
          f"the rest no claim in both), "
          f"{len(v['one-sided'])} ranked in one run only, {len(v['contradicts'])} contradictory, "
          f"{len(v['in one run only'])} measured in one run only")
    bad = v["contradicts"] + (v["one-sided"] if args.strict else [])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
