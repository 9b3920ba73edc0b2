"""experiments/compare_rankings.py: two reproductions' rankings side by side."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_rankings", ROOT / "experiments" / "compare_rankings.py")
cr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cr)


def test_directions_and_verdicts():
    assert cr.direction((1.1, 1.3), 1.0) == 1 and cr.direction((0.7, 0.9), 1.0) == -1
    assert cr.direction((0.9, 1.1), 1.0) == "?" and cr.direction(None, 1.0) is None
    assert cr.direction((1.004, 1.013), 1.0) == 0  # off 1, but inside the captions' margin: equivalent
    assert cr.direction((0.971, 0.983), 1.0) == "?"  # across the margin's edge: no claim
    assert cr.direction((-0.05, -0.01), 0.0) == "?" and cr.direction((-0.015, 0.01), 0.0) == 0
    assert cr.versus((0.8, 0.9), (0.5, 0.7)) == 1 and cr.versus((0.5, 0.7), (0.6, 0.9)) == "?"
    v = cr.compare({"a": 1, "b": "?", "c": -1, "d": 1, "f": 1, "g": 0},
                   {"a": 1, "b": 1, "c": 1, "e": 0, "f": 0, "g": "?"})
    assert v == {"same": ["a"], "one-sided": ["b", "g"], "contradicts": ["c", "f"], "in one run only": ["d", "e"]}


def trial(contender, seed, ettr, status="succeeded"):
    return {"contender": contender, "ranks": 4, "seed": seed, "status": status, "ettr": ettr,
            "success": status == "succeeded", "faults_injected": 1}


def write(d: Path, rows):
    (d / "goodput").mkdir(parents=True)
    (d / "goodput" / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_goodput_rankings_that_flip_are_a_contradiction(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, [trial("elastic", s, 0.9 + 0.01 * s) for s in range(6)] + [trial("scratch", s, 0.3 + 0.01 * s) for s in range(6)])
    write(b, [trial("elastic", s, 0.3 + 0.01 * s) for s in range(6)] + [trial("scratch", s, 0.9 + 0.01 * s) for s in range(6)])
    assert cr.claims(a)["goodput 4 ranks: ETTR scratch vs elastic"] == -1
    assert cr.main([str(a), str(a)]) == 0
    assert cr.main([str(a), str(b)]) == 1
    assert "contradicts  - +  goodput 4 ranks: ETTR scratch vs elastic" in capsys.readouterr().out
