"""Every notebook in notebooks/ executes headless (nbclient, the python3 kernel of this
interpreter) on the committed results, and writes its figures. Figures go to a temporary
folder ($PSLAB_FIGURES_DIR), so the test leaves results/figures untouched. The notebooks
run concurrently (their kernels mostly wait on start-up and imports)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# the figure(s) each notebook must write
FIGURES = {"00_goodput": ["goodput"], "01_success_rate": ["success_rate"], "02_consistency": ["consistency"], "03_traffic": ["traffic"],
           "04_recovery": ["recovery"], "05_stragglers": ["stragglers"], "06_scalability": ["scalability"],
           "07_simulator": ["sim_validation", "sim_curves", "goodput_scale"]}


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    old = {k: os.environ.get(k) for k in ("PSLAB_FIGURES_DIR", "MPLBACKEND")}
    os.environ.update(PSLAB_FIGURES_DIR=str(out), MPLBACKEND="Agg")  # the kernels inherit them

    def run(path):
        nb = nbformat.read(path, as_version=4)
        try:
            NotebookClient(nb, timeout=240, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
            return nb, None
        except Exception as e:  # reported by the notebook's own test
            return nb, e

    try:
        with ThreadPoolExecutor(max_workers=4) as ex:
            done = dict(zip([p.stem for p in NOTEBOOKS], ex.map(run, NOTEBOOKS)))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out, done


def test_there_is_a_notebook_per_comparison_and_the_simulator():
    assert {p.stem for p in NOTEBOOKS} >= set(FIGURES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_and_writes_its_figures(path, executed):
    out, done = executed
    nb, error = done[path.stem]
    assert error is None, f"{path.name} failed: {error}"
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "launch(" not in source and "pslab.train" not in source, "notebooks only plot: no training"
    for name in FIGURES.get(path.stem, []):
        png = out / f"{name}.png"
        assert png.exists() and png.stat().st_size > 5_000, f"{path.name} did not write {name}.png"
