"""The PS run's numbers for summary.json, from the servers' and workers' own counts.

- rows_applied: the training rows whose gradients the model absorbed. Every batch reaches
  every key range (a push covers every range of every server), and each range counts the
  rows of the batches it applied, so each range must hold exactly the planned rows;
  rows_applied is the smallest range count and rows_applied_max the largest (a batch
  applied twice shows in the max, a lost one in the min). Epochs add up.
- examples: rows_applied less the rows a resumed run started with.
- duplicates_dropped: push parts (or parts of them) a server refused because their
  ranges had already applied that batch.
- lost_updates: rows of batches the servers acknowledged that the final model's ranges
  do not hold (a range restored from an older checkpoint): measured, for R = 1 too.
- replicas_identical: the digests of every replicated range's copies compared (None when
  nothing is replicated, or a copy's final record is missing).
"""
from __future__ import annotations

import numpy as np


def applied_ranges(servers: list[dict]) -> dict[int, tuple[int, set]]:
    """range -> (rows, batch ids) from the primaries' final records."""
    out = {}
    for v in servers:
        for r, (rows, bids) in v.get("applied", {}).items():
            out[int(r)] = (int(rows), set(bids))
    return out


def lost_rows(coord, applied: dict, workers: list[dict]) -> int:
    acked: dict[int, set] = {}
    for b in coord.ledger.acked:  # reported acknowledged by every server (also by dead workers)
        acked[int(b)] = set(range(coord.membership.n_ranges))
    for v in workers:
        for b, rr in v.get("acked", {}).items():
            acked.setdefault(int(b), set()).update(rr)
    lost = 0
    for b, rr in acked.items():
        if any(r in applied and b not in applied[r][1] for r in rr):
            lost += coord.plan.batches[b]["rows"]
    return lost


def replicas_identical(membership, servers: list[dict]):
    if membership.replication < 2 or len(membership.servers) < 2:
        return None
    digests = {int(v["index"]): v.get("digests", {}) for v in servers}
    for r, reps in enumerate(membership.ranges):
        if len(reps) < 2:
            continue
        got = [digests.get(s, {}).get(str(r)) for s in reps]
        if any(g is None for g in got):
            return None
        if len(set(got)) > 1:
            return False
    return True


def result(c, clock: int, final: dict, train_s: float) -> dict:
    fin = c.finals
    servers = [v for (role, _), v in sorted(fin.items()) if role == "server"]
    workers = [v for (role, _), v in sorted(fin.items()) if role == "worker"]
    pulls = sum(v["pulls"] for v in servers)
    by_role = {"coordinator": c.rec.acct.snapshot()["bytes_sent"],
               "server": sum(v["acct"]["bytes_sent"] for v in servers),
               "worker": sum(v["acct"]["bytes_sent"] for v in workers)}
    comp_parts = [v["compression"] for v in servers + workers] + [c.van.compression()]
    wire = sum(x["data_bytes"] for x in comp_parts)
    raw = sum(x["data_bytes_uncompressed"] for x in comp_parts)
    compression = {"data_bytes": wire, "data_bytes_uncompressed": raw, "all": raw / wire if wire else None}
    for sw in ("fp16", "delta_keys", "key_cache", "kkt_filter"):
        if bool(c.cfg.backend.compression.get(sw, False)):
            without = sum(x.get(sw, x["data_bytes"]) for x in comp_parts)
            compression[sw] = without / wire if wire else None
    kkt_total = sum(v.get("kkt_total", 0) for v in workers)
    if kkt_total:
        compression["kkt_kept_fraction"] = sum(v.get("kkt_kept", 0) for v in workers) / kkt_total
    steps = [v["step_time_s"] for v in workers if v.get("step_time_s") is not None]
    applied = applied_ranges(servers)
    counts = [applied[r][0] for r in range(c.membership.n_ranges) if r in applied]
    complete = len(counts) == c.membership.n_ranges
    rows_applied = min(counts) if complete else None
    examples = rows_applied - c.plan.examples_before(c.start_clock) if complete else None
    bc = c.cfg.backend
    return {
        "steps": clock, "examples": examples, "train_s": train_s, "eval_s": c.eval_s,
        "examples_per_s": examples / train_s if examples is not None and train_s > 0 else None,
        # the whole plan's rows, also when resumed: rows_applied counts the checkpoint's rows too
        "rows_planned": c.plan.examples_before(c.end_clock),
        "rows_applied": rows_applied, "rows_applied_max": max(counts) if complete else None,
        "duplicates_dropped": sum(int(v.get("dup_parts", 0)) for v in servers),
        "lost_updates": lost_rows(c, applied, workers),
        "lost_updates_definition": "rows of batches the servers acknowledged that the final model does not hold "
                                   "(a range restored from an older checkpoint)",
        "replicas_identical": replicas_identical(c.membership, servers),
        "rereplications": c.rereplications,
        "test_logloss": final["logloss"], "test_auc": final["auc"], "test_accuracy": final["accuracy"],
        "workers": c.layout.workers, "servers": c.layout.servers,
        "consistency": str(bc.consistency),
        "staleness": int(bc.staleness) if str(bc.consistency) != "bsp" else 0,
        "ranks_alive_end": 1 + len(fin), "failures_detected": len(c.failure_log),
        "recovery_s": [round(x, 4) for x in c.recovery_s],
        "failures": c.failure_log, "failovers": c.failovers,
        "rows_handed_over": c.ledger.handed_over, "clocks_added": c.shift,
        "backups_launched": c.backups.launched, "backup_wins": c.backups.wins,
        "replication": c.membership.replication, "key_ranges": c.membership.n_ranges,
        "heartbeat_timeout_s": c.hb_timeout,
        "retried_parts": sum(int(v.get("resent", 0)) for v in workers),
        "rerouted_parts": sum(int(v.get("rerouted", 0)) for v in workers),
        "step_time_s": float(np.median(steps)) if steps else None,
        "staleness_max": max((v["staleness_max"] for v in servers), default=0),
        "staleness_mean": sum(v["staleness_sum"] for v in servers) / pulls if pulls else 0.0,
        "pulls": pulls,
        "bytes_by_role": by_role,
        "bytes_by_kind": _sum_kinds([v["acct"] for v in servers + workers] + [c.rec.acct.snapshot()]),
        "wait_fraction_by_worker": {str(v["index"]): round(v["wait_fraction"], 4) for v in workers},
        "idle_s_by_worker": {str(v["index"]): round(v["idle_s"], 4) for v in workers},
        "compression": compression,
        "model_keys": sum(v["lead_keys"] for v in servers),
        "keys_by_server": {str(v["index"]): v["keys"] for v in servers},
        "table_bytes_by_server": {str(v["index"]): v["table_bytes"] for v in servers},
        "checkpoints": c.manifests.written, "resumed_from": c.resumed_from, "start_clock": c.start_clock,
        "evals": len(c.evals),
    }


def _sum_kinds(accts: list[dict]) -> dict:
    out: dict[str, int] = {}
    for a in accts:
        for k, v in a.get("bytes_by_kind", {}).items():
            out[k] = out.get(k, 0) + int(v)
    return out
