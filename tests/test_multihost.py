"""Several hosts on one machine (python -m pslab.launch --hosts K): placement, whole-host
faults (faults=kill_host / hang_host), replicas across failure domains, and teardown.
The MPI tests assert on the run's JSON records; the long ones are marked slow.

    pytest -q tests/test_multihost.py            # the quick ones
    pytest -q -m slow tests/test_multihost.py    # every backend, every fault
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT
from pslab.faults import FaultPlanError, parse_plan, resolve_events
from pslab.faults.hazard import host_schedule, my_host_failure_time
from pslab.launcher.hosts import EmulatedHosts, placement, ranks_by_host
from pslab.launcher.procs import run_processes

PS_ROLES = {"coordinator": 1, "server": 2, "worker": 5, "rank": 8}
KILL_HOST = {"name": "k", "events": [{"action": "kill_host", "target": {"host": "auto"}, "at": {"progress": 0.5}}]}


# ------------------------------------------------------------------ no MPI

def test_placement_round_robin_and_coordinator_host():
    assert ranks_by_host(placement(6, 2)) == {"host0": [0, 2, 4], "host1": [1, 3, 5]}
    assert ranks_by_host(placement(7, 3, coordinator_host=True)) == {"host0": [0], "host1": [1, 3, 5],
                                                                     "host2": [2, 4, 6]}


def test_kill_host_targets_a_host_without_rank_0_unless_named():
    hosts = placement(8, 2)
    (ev,) = resolve_events(parse_plan(KILL_HOST), PS_ROLES, hosts)
    assert ev.host == "host1" and ev.rank == 1  # the host's lowest rank fires the trigger
    named = {**KILL_HOST, "events": [{**KILL_HOST["events"][0], "target": {"host": 0}}]}
    assert resolve_events(parse_plan(named), PS_ROLES, hosts)[0].host == "host0"
    rnd = {**KILL_HOST, "events": [{**KILL_HOST["events"][0], "target": {"host": "random"}}]}
    for seed in range(5):
        assert resolve_events(parse_plan({**rnd, "seed": seed}), PS_ROLES, placement(8, 3))[0].host != "host0"


@pytest.mark.parametrize("plan, hosts, msg", [
    (KILL_HOST, None, "need emulated hosts"),
    (KILL_HOST, ["host0"] * 8, "every host holds rank 0"),
    ({"events": [{"action": "kill_host", "target": {"role": "worker"}, "at": {"step": 1}}]}, None,
     "needs a host target"),
    ({"events": [{"action": "kill", "target": {"host": 1}, "at": {"step": 1}}]}, None, "not a host"),
    ({"events": [{"action": "kill_host", "target": {"host": 5}, "at": {"step": 1}}]}, placement(8, 2),
     "host=5: out of range"),
])
def test_bad_host_faults_name_the_key(plan, hosts, msg):
    with pytest.raises(FaultPlanError, match=msg):
        resolve_events(parse_plan(plan), PS_ROLES, hosts)


def test_host_hazard_draws_once_per_host_and_spares_rank_0s_host():
    spec = parse_plan({"hazard": {"kind": "constant", "rate_per_s": 0.1, "per": "host"}}).hazard
    hosts = placement(9, 3)
    sched = host_schedule(spec, 3, hosts)
    assert set(sched) == {"host1", "host2"}
    draws = [my_host_failure_time(spec, 3, r, hosts) for r in range(9)]
    assert [d["host"] for d in draws if d["eligible"]] == ["host1", "host2"]  # ranks 1 and 2 draw
    assert {d["host"]: d["fires_at_s"] for d in draws if d["eligible"]} == sched
    with pytest.raises(FaultPlanError, match="faults.hazard.action=slow"):
        parse_plan({"hazard": {"kind": "constant", "rate_per_s": 0.1, "per": "host", "action": "slow"}})


@pytest.mark.parametrize("args, msg", [
    (["-n", "4", "--hosts", "0"], "--hosts 0: the number of emulated hosts must be >= 1"),
    (["-n", "2", "--hosts", "3"], "--hosts 3: more hosts than ranks"),
    (["-n", "4", "faults=kill_host"], "need emulated hosts"),
    (["-n", "4", "--hosts", "2", "--hostfile", "hosts.txt"], "--hosts and --hostfile: pick one"),
    (["-n", "4", "backend=ps", "backend.coordinator_host=true"], "backend.coordinator_host=true"),
    (["-n", "4", "--hosts-netns"], "go with --hosts K"),
    (["-n", "4", "--hosts", "2", "--link-gbit", "1"], "add --hosts-netns"),
    (["-n", "4", "--hosts", "2", "--hosts-netns", "--link-gbit", "0"], "--link-gbit 0: must be > 0"),
])
def test_bad_host_flags_exit_2_with_one_line(tmp_path, args, msg):
    (tmp_path / "hosts.txt").write_text("a slots=2\n")
    p = subprocess.run([sys.executable, "-m", "pslab.launch", *args, "backend=allreduce"] if "backend=ps" not in args
                       else [sys.executable, "-m", "pslab.launch", *args], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


# ------------------------------------------------------------------ MPI

def gone(run_dir: Path, daemons=()) -> bool:
    """No rank, daemon or shared-memory directory of the run is left."""
    alive = [p for p in daemons if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    shm = list(Path("/dev/shm").glob(Path(EmulatedHosts(Path(run_dir).resolve(), 1, 1).shm).name + "-*"))
    return not run_processes(run_dir) and not alive and not shm


def daemons_of(run_dir: Path) -> list[psutil.Process]:
    out = []
    for f in (run_dir / "hosts").glob("host*.pid"):
        try:
            top = psutil.Process(int(f.read_text()))
            out += [top] + top.children(recursive=True)
        except (psutil.Error, ValueError):
            pass
    return out


def host_fault_records(run) -> tuple[dict, list[dict]]:
    (hf,) = run.events("host_fault")
    kills = [e for e in run.events("fault_injected") if e.get("host_fault_id") == hf["host_fault_id"]]
    return hf, kills


def assert_whole_host_died(run, host: str, ranks: list[int]) -> None:
    hf, kills = host_fault_records(run)
    assert hf["host"] == host and hf["action"] == "kill_host" and hf["ranks"] == ranks
    assert hf["daemon_pids"] and hf["held_sockets"] > 0  # the daemon died with them
    assert sorted(e["rank"] for e in kills) == ranks and len({e["t"] for e in kills}) == 1  # one instant
    assert run["killed_pids_dead"] and run["hosts"][host] == ranks
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in hf["daemon_pids"] + hf["rank_pids"])


@pytest.mark.mpi
def test_two_hosts_allreduce_matches_one_host(launch):
    one = launch(4, "backend=allreduce", "model=lr", "data=criteo_sample", deadline=300)
    two = launch(4, "--hosts", "2", "backend=allreduce", "model=lr", "data=criteo_sample", deadline=300)
    assert one["status"] == two["status"] == "succeeded", two.summary.get("reason")
    assert two["hosts"] == {"host0": [0, 2], "host1": [1, 3]} and two["hosts_emulated"] is True
    assert one["hosts_emulated"] is False and len(one["hosts"]) == 1
    assert abs(one["test_auc"] - two["test_auc"]) <= 1e-4
    # each rank knows its host (its own record), and each host had its own daemon
    started = {e["rank"]: e["host"] for e in two.events("rank_started")}
    assert started == {0: "host0", 1: "host1", 2: "host0", 3: "host1"}
    assert sorted(p.name for p in (two.dir / "hosts").glob("host*.pid")) == ["host0.pid", "host1.pid"]
    assert gone(two.dir)


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("backend", [
    ("backend=ps", "backend.servers=2", "backend.replication=2"),
    ("backend=allreduce", "backend.elastic=true"),
], ids=["ps", "elastic"])
def test_two_hosts_match_one_host(launch, backend):
    one = launch(6, *backend, "model=lr", "data=criteo_sample", "train.batch_size=240", deadline=300)
    two = launch(6, "--hosts", "2", *backend, "model=lr", "data=criteo_sample", "train.batch_size=240",
                 deadline=300)
    assert one["status"] == two["status"] == "succeeded", two.summary.get("reason")
    assert abs(one["test_auc"] - two["test_auc"]) <= 1e-4


@pytest.mark.mpi
@pytest.mark.slow
def test_kill_host_ps_replicas_across_hosts_lose_nothing(launch):
    run = launch(8, "--hosts", "2", "backend=ps", "backend.servers=2", "backend.replication=2", "model=lr",
                 "data=criteo_sample", "faults=kill_host", deadline=300)
    assert run["status"] == "succeeded", run.summary.get("reason")
    assert run["lost_updates"] == 0 and run["ranks_alive_end"] == 4
    (placed,) = run.events("replica_hosts")
    assert placed["server_hosts"] == {"0": "host1", "1": "host0"} and placed["ranges_on_one_host"] == 0
    assert_whole_host_died(run, "host1", [1, 3, 5, 7])  # server 0 and workers 0, 2, 4
    assert gone(run.dir)


@pytest.mark.mpi
@pytest.mark.slow
def test_kill_host_elastic_allreduce_shrinks_once(launch):
    run = launch(6, "--hosts", "2", "backend=allreduce", "backend.elastic=true", "model=lr",
                 "data=criteo_sample", "faults=kill_host", "train.batch_size=240", deadline=300)
    assert run["status"] == "succeeded", run.summary.get("reason")
    assert run["ranks_alive_end"] == 3
    assert_whole_host_died(run, "host1", [1, 3, 5])
    shrinks = {(e["rank"], tuple(e["dead_world_ranks"])) for e in run.events("recovered")}
    assert shrinks == {(0, (1, 3, 5)), (2, (1, 3, 5)), (4, (1, 3, 5))}  # every survivor, one shrink
    assert gone(run.dir)


@pytest.mark.mpi
@pytest.mark.slow
def test_kill_host_classic_allreduce_fails_cleanly(launch):
    run = launch(4, "--hosts", "2", "backend=allreduce", "model=lr", "data=criteo_sample", "faults=kill_host",
                 deadline=300)
    assert run["status"] == "failed" and run["exit_code"] == 1
    assert "classic allreduce cannot go on" in run["reason"] or "aborted" in run["reason"], run["reason"]
    assert run["failed_at_s"] < 200
    assert_whole_host_died(run, "host1", [1, 3])
    assert gone(run.dir)


@pytest.mark.mpi
@pytest.mark.slow
def test_sigint_during_a_two_host_run_leaves_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "pslab.launch", "-n", "4", "--hosts", "2", "--quiet",
                             "--run-dir", str(run_dir), "--deadline", "200", "backend=allreduce",
                             "faults=hang_one_worker"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        t_end = time.time() + 120
        while time.time() < t_end and not list(run_dir.glob("ranks/rank-*.events.jsonl"))[3:]:
            time.sleep(0.5)
        time.sleep(3)
        daemons = daemons_of(run_dir)
        assert len([p for p in daemons if "prted" in " ".join(p.cmdline())]) >= 2
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=90)[0]
        assert proc.returncode == 130, out
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
        t_end = time.time() + 15
        while time.time() < t_end and not gone(run_dir, daemons):
            time.sleep(0.5)
        assert gone(run_dir, daemons)
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in run_processes(run_dir):
            p.kill()


def netns_unavailable() -> str | None:
    import os
    import shutil
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip tool (iproute2) is missing"
    return None


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))
def test_hosts_netns_puts_each_host_in_its_own_network_stack_and_removes_it(tmp_path):
    """--hosts-netns: each host's ranks run in a namespace of their own (not this one);
    SIGINT mid-run leaves no rank, daemon, namespace or bridge of the run."""
    import os

    from pslab.launcher.netns import Netns
    run_dir = tmp_path / "run"
    net = Netns(run_dir.resolve(), ["host0", "host1"])
    proc = subprocess.Popen([sys.executable, "-m", "pslab.launch", "-n", "4", "--hosts", "2", "--hosts-netns",
                             "--quiet", "--run-dir", str(run_dir), "--deadline", "200", "backend=allreduce",
                             "faults=hang_one_worker"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        t_end = time.time() + 120
        while time.time() < t_end and len(list(run_dir.glob("ranks/rank-*.events.jsonl"))) < 4:
            time.sleep(0.5)
        time.sleep(2)
        pids = {int(json.loads(p.open().readline())["pid"]): json.loads(p.open().readline())["host"]
                for p in run_dir.glob("ranks/rank-*.events.jsonl")}
        ns = {h: set() for h in ("host0", "host1")}
        for pid, h in pids.items():
            ns[h].add(os.readlink(f"/proc/{pid}/ns/net"))
        mine = os.readlink("/proc/self/ns/net")
        assert all(len(v) == 1 for v in ns.values()) and ns["host0"] != ns["host1"], ns
        assert mine not in ns["host0"] | ns["host1"]
        daemons = daemons_of(run_dir)
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=90)[0]
        assert proc.returncode == 130, out
        t_end = time.time() + 15
        while time.time() < t_end and not gone(run_dir, daemons):
            time.sleep(0.5)
        assert gone(run_dir, daemons)
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert not any(n in names for n in net.ns.values()) and net.bridge not in links
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in run_processes(run_dir):
            p.kill()
        net.made = [("netns", n) for n in net.ns.values()] + [("link", net.bridge)]
        net.teardown()  # a failed test leaves nothing either


@pytest.mark.mpi
@pytest.mark.slow
def test_hang_host_ps_fences_the_frozen_host(launch):
    """hang_host: the host's ranks and daemon SIGSTOPped; the PS finds them by heartbeats."""
    run = launch(8, "--hosts", "2", "backend=ps", "backend.servers=2", "backend.replication=2", "model=lr",
                 "data=criteo_sample", "faults=hang_host", deadline=300)
    assert run["status"] == "succeeded", run.summary.get("reason")
    assert run["lost_updates"] == 0 and run["ranks_alive_end"] == 4
    hf, hangs = host_fault_records(run)
    assert hf["action"] == "hang_host" and hf["ranks"] == [1, 3, 5, 7] and hf["daemon_pids"]
    assert sorted(e["rank"] for e in hangs) == [1, 3, 5, 7] and {e["action"] for e in hangs} == {"hang"}
    assert run["killed_pids_dead"] and gone(run.dir)  # the launcher ended the stopped ones
