"""Every config composes; bad keys and names get clear errors."""
from pathlib import Path

import pytest

from pslab.config import CONF_DIR, ConfigError, load_config

GROUPS = ["data", "model", "optim", "backend", "faults", "experiment"]
NEEDS = {("data", "libsvm"): ["data.path=x.svm"], ("data", "csv"): ["data.path=x.csv", "data.label=y", "data.categorical=[a]"]}


def options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,name", [(g, n) for g in GROUPS for n in options(g)])
def test_every_config_composes(group, name):
    cfg = load_config([f"{group}={name}", *NEEDS.get((group, name), [])])
    assert cfg.train.batch_size > 0
    if group != "experiment":
        assert cfg[group].name == name


def test_defaults():
    cfg = load_config([])
    assert (cfg.data.name, cfg.model.name, cfg.backend.name, cfg.faults.name) == ("criteo_sample", "lr", "local", "none")


def test_unknown_model_is_named():
    with pytest.raises(ConfigError, match="model"):
        load_config(["model=svm"])


def test_bad_k_is_named():
    with pytest.raises(ConfigError, match=r"model.k=0"):
        load_config(["model=fm", "model.k=0"])


def test_missing_mandatory_key_is_named():
    with pytest.raises(ConfigError, match=r"data.path"):
        load_config(["data=libsvm"])


def test_experiment_files_carry_their_command():
    for p in Path(CONF_DIR / "experiment").glob("*.yaml"):
        lines = p.read_text().splitlines()
        head = lines[: next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))]
        assert any("python -m pslab" in line or "experiments/" in line for line in head), \
            f"{p.name}: no run command in its header comment"
