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
    proc = subprocess.run([sys.executable, "-m", "pslab.launch", "-n", "1", "--run-dir", str(tmp_path / "r"),
                           "model=svm"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "model" in proc.stderr and "svm" in proc.stderr


def test_bad_data_file_fails_with_the_file_named(launch, tmp_path):
    bad = tmp_path / "bad.svm"
    bad.write_text("+1 1:1\n-1 2:x\n")
    run = launch(1, "data=libsvm", f"data.path={bad}")
    assert run["status"] == "failed"
    assert f"{bad}:2" in run["reason"]


def test_deadline_ends_a_run_with_a_status(launch):
    run = launch(1, "data=synthetic", "data.rows=2000000", "data.block_rows=20000", deadline=8)
    assert run["status"] == "failed" and "deadline" in run["reason"]
    assert run["wall_s"] < 15
