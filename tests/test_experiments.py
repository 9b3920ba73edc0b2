"""The experiment scripts: every arm of every preset composes (or is skipped with a
reason), each experiment config carries its run command, and the scripts reproduce.py
runs exist. No MPI: nothing is launched."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ["consistency", "traffic", "recovery", "stragglers", "scalability"]


@pytest.fixture(scope="module")
def sweep():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        yield importlib.import_module("sweep")
    finally:
        sys.path.remove(str(ROOT / "experiments"))


def _shape(arm) -> tuple:
    """Arms that differ only in the values of their overrides compose alike (the backend
    aside): test one of them."""
    return tuple(sorted(o if o.startswith("backend=") else o.split("=")[0] for o in arm.overrides))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_arm_composes_or_says_why_not(sweep, name):
    mod = importlib.import_module(name)
    for preset in ("small", "large"):
        arms = mod.arms(preset, argparse.Namespace())
        labels = [a.label for a in arms]
        assert len(labels) == len(set(labels)), "arm labels must be unique (they are folders)"
        assert all(a.n >= 1 and a.reps >= 1 for a in arms)
    seen = set()
    for arm in mod.arms("small", argparse.Namespace()):
        if _shape(arm) in seen:
            continue
        seen.add(_shape(arm))
        reason = sweep.why_skip(name, arm)
        assert reason is None or len(reason) > 20, f"{arm.label}: skip reasons must explain: {reason!r}"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_config_has_its_command(name):
    text = (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert f"experiments/{name}.py" in text and "pslab.launch" in text


def test_reproduce_steps_exist():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        rep = importlib.import_module("reproduce")
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    for step in rep.STEPS:
        if step == "success_rate":  # the fault harness's experiment
            continue
        assert (ROOT / "experiments" / f"{step}.py").exists()
    makefile = (ROOT / "Makefile").read_text()
    assert "reproduce: setup" in makefile and "PRESET" in makefile
