"""Stragglers: waiting (BSP) vs bounded staleness vs backup instances (BRIEF section 5, #5).

    .venv/bin/python experiments/stragglers.py                  # small preset, ~5 min on 2 cores
    .venv/bin/python experiments/stragglers.py --preset large   # 8 workers, straggler 2x/3x/5x/10x
    .venv/bin/python experiments/stragglers.py --figure-only    # redraw results/figures/stragglers.png

The last of 3 workers is slowed 3x, and in a second set of arms 10x (faults=straggler:
it sleeps (factor - 1) x its own step time after each step; as the last to arrive it does
not wait at the barrier, so on 2 oversubscribed cores, where a BSP clock costs more
synchronization than computing, 3x is partly hidden and 10x is not). Arms: the PS with
BSP (everyone waits), SSP with staleness 4 (fast workers run ahead, boundedly), ASP (no
waiting; the others finish their rows early), ASP with backup instances
(backend.backup_workers: the coordinator copies a straggler's remaining rows to an idle
worker and keeps the first result, KunPeng's mitigation; under BSP or SSP(4) no worker
gets idle enough for the PS to launch one), and synchronous allreduce (waits, like BSP);
each backend also runs without the straggler, the reference for its slowdown.
Measured: training time, time to the target log-loss (the fault-free PS run's final
log-loss + 1%), idle fraction. KunPeng anchor: backup instances gain 10-20%.

The backup-instance arm is skipped, with the reason printed, until conf/backend/ps.yaml
has the option (looked for under the names in BACKUP_OPTIONS).
"""
from __future__ import annotations

import sys

import sweep
from sweep import Arm

NAME = "stragglers"
# The PS backup-instance switch, as the PS/fault engineers may name it: the first that
# exists in conf/backend/ps.yaml is used.
BACKUP_OPTIONS = ["backend.backup_workers", "backend.backup_instances", "backend.backup"]
# 6 paired repetitions an arm, as in consistency.py (why there); 14 min in make reproduce on 2 cores.
PRESETS = {
    "small": dict(workers=3, factors=[3, 10], reps=6, extra=[]),
    "large": dict(workers=8, factors=[2, 3, 5, 10], reps=6,
                  extra=["data.rows=196608", "data.test_rows=20000", "train.batch_size=256"]),
}


def backup_option() -> str | None:
    from omegaconf import OmegaConf

    from pslab.config import load_config
    cfg = load_config(["backend=ps"])
    for key in BACKUP_OPTIONS:
        if OmegaConf.select(cfg, key, default=None) is not None:
            return key
    return None


def arms(preset: str, args) -> list[Arm]:
    p = PRESETS[preset]
    w, r = p["workers"], p["reps"]
    n_ps = 2 + w
    ps = ["backend=ps", "backend.servers=1", *p["extra"], *sweep.ps_quiet()]
    ar = ["backend=allreduce", *p["extra"]]
    out = [Arm("ps-bsp-none", n_ps, [*ps, "backend.consistency=bsp", "faults=none"],
               {"backend": "ps", "mitigation": "none", "straggler": 1}, r),
           Arm("allreduce-none", w, [*ar, "faults=none"], {"backend": "allreduce", "mitigation": "none",
                                                            "straggler": 1}, r)]
    key = backup_option()
    for f in p["factors"]:
        sfx = "" if len(p["factors"]) == 1 else f"-x{f}"
        slow = [f"faults.events.0.factor={f}"]
        out += [
            Arm(f"ps-bsp{sfx}", n_ps, [*ps, "backend.consistency=bsp", *slow],
                {"backend": "ps", "mitigation": "wait", "straggler": f}, r),
            Arm(f"ps-ssp{sfx}", n_ps, [*ps, "backend.consistency=ssp", "backend.staleness=4", *slow],
                {"backend": "ps", "mitigation": "staleness", "staleness": 4, "straggler": f}, r),
            Arm(f"ps-asp{sfx}", n_ps, [*ps, "backend.consistency=asp", *slow],
                {"backend": "ps", "mitigation": "async", "straggler": f}, r),
            # backup instances need workers with nothing left to do: under BSP and SSP the
            # others never get far enough ahead of the straggler, so the PS launches none;
            # under ASP they finish their rows and one takes over the straggler's rest
            Arm(f"ps-backup{sfx}", n_ps,
                [*ps, "backend.consistency=asp", f"{key or BACKUP_OPTIONS[0]}=true", *slow],
                {"backend": "ps", "mitigation": "backup", "base": "async", "straggler": f, "option": key}, r,
                probe=None if key else (lambda cfg: "PS backup instances are not built yet (no "
                                        + " / ".join(BACKUP_OPTIONS) + " in conf/backend/ps.yaml)")),
            Arm(f"allreduce{sfx}", w, [*ar, *slow], {"backend": "allreduce", "mitigation": "wait", "straggler": f},
                r),
        ]
    return out


def figure(out_dir, args=None):
    from pslab.analysis import figures, load_runs
    from pslab.analysis.io import read_json
    m = read_json(out_dir / "manifest.json") or {}
    skipped = "; ".join(f"{a['label']}" for a in m.get("arms", []) if a.get("skipped"))
    return figures.fig_stragglers(load_runs(out_dir), skipped=skipped or None)[1]


if __name__ == "__main__":
    sys.exit(sweep.main(NAME, __doc__, arms, figure))
