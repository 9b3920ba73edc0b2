"""The launcher with backend=local: summary.json always, clear errors, no leftovers."""
import json
import subprocess
import sys

import pytest

from pslab.launch import SUMMARY_FIELDS

pytestmark = pytest.mark.mpi


def test_local_lr_criteo_succeeds_with_every_summary_field(launch):
    run = launch(1, "backend=local", "model=lr", "data=criteo_sample")
    assert run["status"] == "succeeded", run.summary.get("reason")
    assert run["exit_code"] == run.proc.returncode == 0 and run["mpirun_exit_code"] == 0
    assert set(SUMMARY_FIELDS) <= set(run.summary)
    assert run["test_auc"] >= 0.72
    assert run["examples"] == 8000 and run["ranks"] == 1
    assert (run.dir / "config.yaml").exists() and run.metrics()[-1]["kind"] == "eval"
    started = run.events("rank_started")
    assert len(started) == 1 and started[0]["pid"] > 0


def test_fm_close_to_lr_and_same_as_reported(launch):
    lr = launch(1, "model=lr")
    fm = launch(1, "model=fm", "run.save_model=true")
    assert fm["test_auc"] >= lr["test_auc"] - 0.01
    keys, W = fm.model()
    assert W.shape == (len(keys), 9)


def test_a9a_accuracy(launch):
    run = launch(1, "data=a9a", "model=lr")
    assert run["test_accuracy"] >= 0.845, run["test_accuracy"]


def test_config_error_is_reported_before_launch(tmp_path):
    """As a user sees it: one line, exit code 2, a summary saying "invalid", no MPI launch."""
    run_dir = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-m", "pslab.launch", "-n", "1", "--run-dir", str(run_dir),
                           "model=svm"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "pslab.launch: model=svm: no such model (choose fm, lr)\n"
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "invalid" and s["exit_code"] == 2 and "model=svm" in s["reason"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["summary.json"]


def test_progress_lines_while_a_run_goes(tmp_path):
    """Piped: the run dir first, then a plain progress line every few seconds (one at
    least every 10 s), then the result; --quiet (test_launch_signals) shows none."""
    run_dir = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-m", "pslab.launch", "-n", "2", "--run-dir", str(run_dir),
                           "backend=allreduce", "data=synthetic", "data.rows=40000", "data.test_rows=4000"],
                          capture_output=True, text=True, timeout=300)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "succeeded" and proc.returncode == s["exit_code"] == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == f"[pslab] run dir: {run_dir}"
    progress = [x for x in lines if "ex/s" in x]
    assert len(progress) >= max(1, int(s["wall_s"] // 10)), proc.stderr
    assert "\r" not in proc.stderr
    last = progress[-1]
    assert "epoch 1/1 step " in last and "loss " in last and "sent " in last and "ranks 2/2" in last, last
    assert proc.stdout.startswith("[pslab] succeeded: allreduce/lr n=2")


def test_bad_data_file_fails_with_the_file_named(launch, tmp_path):
    bad = tmp_path / "bad.svm"
    bad.write_text("+1 1:1\n-1 2:x\n")
    run = launch(1, "data=libsvm", f"data.path={bad}")
    assert run["status"] == "failed"
    assert f"{bad}:2" in run["reason"]


def test_deadline_ends_a_run_with_a_status(launch):
    run = launch(1, "data=synthetic", "data.rows=2000000", "data.block_rows=20000", deadline=8)
    assert run["status"] == "failed" and "deadline" in run["reason"]
    assert run["exit_code"] == run.proc.returncode == 1
    assert run["wall_s"] < 15
