"""Every bad input gets one clear line naming the flag, key or file, a non-zero exit code
that agrees with summary.json (status "invalid": found before mpirun started, no MPI
launch; "failed": found by the ranks), and no traceback. One row a case.

The rows call the launcher's main() in this process (a config error costs no MPI launch,
so a subprocess would only add a Python start-up a row); the rows marked `mpi` do start
mpirun, under the launcher's own --deadline. test_launch.py runs the launcher as a
process for the exit code and the terminal as a user sees them.
"""
from __future__ import annotations

import bz2
import gzip
import json
import random
import re

import pytest

from pslab.launch import main

pytestmark = pytest.mark.mpi

def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


GOOD_CSV = "clicked,site,hour\n" + "".join(f"{i % 3 == 0:d},s{i % 7},{i % 24}\n" for i in range(400))
GOOD_SVM = "".join(f"{i % 2} {1 + i % 5}:1 {7 + i % 3}:0.5\n" for i in range(200))
# Files the rows name as {name}; each is written under the test's tmp_path.
FILES = {
    "ok.csv": GOOD_CSV.encode(),
    "ok.svm": GOOD_SVM.encode(),
    "empty.svm": b"",
    "blank.svm": b"\n\n   \n",
    "header.csv": b"clicked,site,hour\n",
    "semi.csv": GOOD_CSV.replace(",", ";").encode(),
    "bad.svm": b"+1 1:1\n-1 2:x\n",
    "badlabel.csv": b"clicked,site,hour\nyes,s1,3\n",
    "tiny.csv": b"clicked,site,hour\n1,a,1\n0,b,2\n",
    "garbage.csv": random.Random(0).randbytes(4000),
    "garbage.csv.gz": gzip.compress(random.Random(1).randbytes(4000)),
    "trunc.csv.gz": half(gzip.compress((GOOD_CSV * 40).encode())),
    "trunc.svm.bz2": half(bz2.compress((GOOD_SVM * 40).encode())),
    "notgzip.csv.gz": GOOD_CSV.encode(),
    "hosts.txt": b"pslab-no-such-host-xyz slots=2\n",
    "nohost.txt": b"# only a comment\n",
    "afile": b"not a directory\n",
}
CSV = ["data=csv", "data.label=clicked", "data.categorical=[site]", "data.numeric=[hour]"]

# (id, launcher arguments, expected status ("invalid", "failed", or None: no run dir or no
# summary), words the error line and the summary's reason must contain, needs mpirun)
ROWS = [
    # data files
    ("empty-libsvm", ["data=libsvm", "data.path={empty.svm}"], "invalid", ["data.path", "empty.svm", "empty"], 0),
    ("blank-libsvm", ["data=libsvm", "data.path={blank.svm}"], "invalid", ["blank.svm", "empty"], 0),
    ("empty-test-file", ["data=libsvm", "data.path={ok.svm}", "data.test_path={empty.svm}"], "invalid",
     ["data.test_path", "empty.svm", "empty"], 0),
    ("missing-test-path", ["data=libsvm", "data.path={ok.svm}", "data.test_path={tmp}/nope.svm"], "invalid",
     ["data.test_path:", "no such file", "nope.svm"], 0),
    ("missing-data-path", [*CSV, "data.path={tmp}/nope.csv"], "invalid", ["data.path:", "no such file", "nope.csv"],
     0),
    ("data-path-is-dir", [*CSV, "data.path={tmp}"], "invalid", ["data.path", "is a directory"], 0),
    ("binary-garbage", [*CSV, "data.path={garbage.csv}"], "invalid", ["garbage.csv", "not a text file"], 0),
    ("binary-in-gzip", [*CSV, "data.path={garbage.csv.gz}"], "invalid", ["garbage.csv.gz", "not a text file"], 0),
    ("gz-that-is-not-gzip", [*CSV, "data.path={notgzip.csv.gz}"], "invalid",
     ["notgzip.csv.gz", "damaged compressed data"], 0),
    ("truncated-gz", [*CSV, "data.path={trunc.csv.gz}"], "failed", ["trunc.csv.gz", "truncated"], 1),
    # cut within the first 8 kB: the launcher's look at the file sees it; later: the ranks do
    ("truncated-bz2-early", ["data=libsvm", "data.path={trunc.svm.bz2}"], "invalid", ["trunc.svm.bz2", "truncated"],
     0),
    ("csv-header-only", [*CSV, "data.path={header.csv}"], "failed", ["header.csv", "no data rows"], 1),
    ("csv-wrong-sep", [*CSV, "data.path={semi.csv}"], "failed", ["semi.csv", "no column 'clicked'", "data.sep=';'"],
     1),
    ("csv-bad-label", [*CSV, "data.path={badlabel.csv}"], "failed", ["badlabel.csv:2", "label 'yes'"], 1),
    ("libsvm-bad-line", ["data=libsvm", "data.path={bad.svm}"], "failed", ["bad.svm:2", "malformed feature"], 1),
    ("test-fraction-leaves-no-test-rows", [*CSV, "data.path={tiny.csv}", "data.test_fraction=0.1"], "failed",
     ["data.test_fraction=0.1", "tiny.csv", "no test rows"], 1),
    # data settings
    ("csv-no-feature-columns", ["data=csv", "data.path={ok.csv}", "data.label=clicked"], "invalid",
     ["data.categorical", "data.numeric"], 0),
    ("csv-missing-path", ["data=csv"], "invalid", ["data.path", "missing value"], 0),
    ("csv-long-sep", [*CSV, "data.path={ok.csv}", "data.sep=ab"], "invalid", ["data.sep", "one character"], 0),
    ("hash-bits-too-big", ["data.hash_bits=50"], "invalid", ["data.hash_bits=50", "<= 40"], 0),
    ("test-fraction-1.5", ["data.test_fraction=1.5"], "invalid", ["data.test_fraction=1.5", "< 1"], 0),
    ("test-fraction-0", ["data=libsvm", "data.path={ok.svm}", "data.test_fraction=0"], "invalid",
     ["data.test_fraction=0"], 0),
    ("no-held-out-set", ["data=libsvm", "data.path={ok.svm}", "data.test_fraction=null"], "invalid",
     ["data.test_path", "data.test_fraction"], 0),
    ("dense-without-hash-bits", ["backend=allreduce", "data.hash_bits=null"], "invalid",
     ["backend.mode=dense", "data.hash_bits"], 0),
    # training, model, optimizer, fault plan, config keys
    ("batch-size-0", ["train.batch_size=0"], "invalid", ["train.batch_size=0", ">= 1"], 0),
    ("batch-size-text", ["train.batch_size=abc"], "invalid", ["train.batch_size='abc'", "integer"], 0),
    ("epochs-0", ["train.epochs=0"], "invalid", ["train.epochs=0"], 0),
    ("fm-k-0", ["model=fm", "model.k=0"], "invalid", ["model.k=0", ">= 1"], 0),
    ("k-without-fm", ["model.k=4"], "invalid", ["model.k=4", "no key model.k", "model=fm"], 0),
    ("unknown-model", ["model=svm"], "invalid", ["model=svm", "fm, lr"], 0),
    ("unknown-key", ["foo=1"], "invalid", ["foo=1", "no key foo"], 0),
    ("unparsable-override", ["data.categorical=[a"], "invalid", ["data.categorical=[a", "cannot parse"], 0),
    ("negative-lr", ["optim=sgd", "optim.lr=-1"], "invalid", ["optim.lr=-1", "> 0"], 0),
    ("bad-fault-plan", ["faults=kill_one_worker", "faults.events.0.at.progress=2"], "invalid",
     ["faults.events[0].at.progress=2"], 0),
    ("fault-target-missing", ["-n", "2", "backend=allreduce", "faults=kill_one_server"], "invalid",
     ["faults.events[0].target.role=server", "no rank with that role"], 0),
    ("config-deadline-0", ["run.deadline_s=0"], "invalid", ["run.deadline_s=0", "> 0"], 0),
    # backends and rank counts
    ("local-with-2-ranks", ["-n", "2", "backend=local"], "invalid", ["backend=local", "-n 1"], 0),
    ("ps-too-few-ranks", ["-n", "3", "backend=ps", "backend.servers=2"], "invalid",
     ["backend=ps", "-n 4 or more", "got -n 3"], 0),
    ("ps-no-server", ["-n", "3", "backend=ps", "backend.servers=0"], "invalid", ["backend.servers=0"], 0),
    ("replication-above-servers", ["-n", "4", "backend=ps", "backend.servers=2", "backend.replication=3"], "invalid",
     ["backend.replication=3", "1..backend.servers=2"], 0),
    ("replication-0", ["-n", "4", "backend=ps", "backend.servers=2", "backend.replication=0"], "invalid",
     ["backend.replication=0"], 0),
    ("unknown-consistency", ["-n", "3", "backend=ps", "backend.consistency=eventual"], "invalid",
     ["backend.consistency='eventual'", "bsp | ssp | asp"], 0),
    ("negative-staleness", ["-n", "3", "backend=ps", "backend.consistency=ssp", "backend.staleness=-1"], "invalid",
     ["backend.staleness=-1"], 0),
    ("ps-request-timeout-below-detection", ["-n", "3", "backend=ps", "backend.heartbeat_timeout_s=30"], "invalid",
     ["backend.request_timeout_s=", "at least twice backend.heartbeat_timeout_s=30"], 0),
    ("hang-timeout-0", ["backend=allreduce", "backend.hang_timeout_s=0"], "invalid", ["backend.hang_timeout_s=0"],
     0),
    # launcher flags
    ("deadline-negative", ["--deadline", "-5"], "invalid", ["--deadline -5", "> 0"], 0),
    ("deadline-nan", ["--deadline", "nan"], "invalid", ["--deadline nan"], 0),
    ("ranks-0", ["-n", "0"], "invalid", ["-n 0", ">= 1"], 0),
    ("ranks-not-a-number", ["-n", "x"], None, ["-n", "invalid int value"], 0),
    ("unknown-flag", ["--bogus"], None, ["unknown launcher flag", "--bogus"], 0),
    ("missing-hostfile", ["--hostfile", "{tmp}/hosts-missing.txt"], "invalid", ["--hostfile", "no such file"], 0),
    ("hostfile-without-hosts", ["--hostfile", "{nohost.txt}"], "invalid", ["--hostfile", "names no host"], 0),
    ("hostfile-unknown-host", ["--hostfile", "{hosts.txt}"], "failed",
     ["mpirun exited with code", "before any rank started:", "mpirun.log"], 1),
    ("missing-mpirun", ["--mpirun", "{tmp}/no-mpirun"], "invalid", ["--mpirun", "no such program"], 0),
    ("run-dir-under-a-file", ["--run-dir", "{afile}/run"], None, ["--run-dir", "cannot write there"], 0),
    ("run-dir-is-a-file", ["--run-dir", "{afile}"], None, ["--run-dir", "is a file"], 0),
]


def materialize(tmp_path, arg: str) -> str:
    for name, data in FILES.items():
        token = "{" + name + "}"
        if token in arg:
            p = tmp_path / name
            if not p.exists():
                p.write_bytes(data)
            arg = arg.replace(token, str(p))
    return arg.replace("{tmp}", str(tmp_path))


def call(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out + out.err


@pytest.mark.parametrize("case,args,status,words,mpi", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input(case, args, status, words, mpi, tmp_path, capsys):
    args = [materialize(tmp_path, a) for a in args]
    run_dir = tmp_path / "run"
    argv = ([] if "-n" in args else ["-n", "1"]) + ([] if "--run-dir" in args else ["--run-dir", str(run_dir)])
    rc, out = call([*argv, "--deadline", "60", "--quiet", *args] if "--deadline" not in args
                   else [*argv, "--quiet", *args], capsys)
    assert rc not in (0, None), out
    assert "Traceback" not in out
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", out), f"control characters on the terminal: {out!r}"
    line = next((x for x in out.splitlines() if all(w in x for w in words)), None)
    assert line is not None, f"no line with {words}:\n{out}"
    summary_path = run_dir / "summary.json"
    if status is None:
        assert rc == 2
        return
    s = json.loads(summary_path.read_text())
    assert s["status"] == status and s["exit_code"] == rc == (2 if status == "invalid" else 1), s
    assert all(w in s["reason"] for w in words), s["reason"]
    # an invalid run costs no MPI launch
    assert (run_dir / "mpirun.log").exists() == bool(mpi)


def test_a_run_dir_that_is_not_empty_is_left_alone(tmp_path, capsys):
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text('{"status": "succeeded"}')
    rc, out = call(["-n", "1", "--quiet", "--run-dir", str(run_dir), "model=svm"], capsys)
    assert rc == 2 and "model=svm" in out
    rc, out = call(["-n", "1", "--quiet", "--run-dir", str(run_dir)], capsys)
    assert rc == 2 and "not empty" in out and "--run-dir" in out
    assert json.loads((run_dir / "summary.json").read_text()) == {"status": "succeeded"}


def test_csv_with_byte_order_mark_and_crlf_reads_as_it_is(launch, tmp_path):
    rng = random.Random(0)
    rows = "".join(f"{int(rng.random() < 0.1 + s / 60)},s{s},{rng.randrange(24)}\r\n"
                   for s in (rng.randrange(40) for _ in range(3000)))
    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbf" + f"clicked,site,hour\r\n{rows}".encode())
    run = launch(1, *CSV, f"data.path={p}")
    assert run["status"] == "succeeded", run.summary.get("reason")
    assert run["exit_code"] == run.proc.returncode == 0
    assert run["examples"] == 2400
