"""Composing the run's config with hydra's compose API (no hydra.main: the launcher,
not hydra, owns the run directory, so ranks never race to create output folders)."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class ConfigError(ValueError):
    pass


def conf_dir() -> Path:
    if not CONF_DIR.is_dir():
        raise ConfigError(f"config folder not found at {CONF_DIR} (install pslab with pip install -e .)")
    return CONF_DIR


def load_config(overrides: list[str]) -> DictConfig:
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
    except HydraException as e:
        raise ConfigError(f"config: {e}") from None
    check(cfg)
    return cfg


def check(cfg: DictConfig) -> None:
    """Catch the mistakes that would otherwise surface deep inside a rank."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        raise ConfigError(f"config: missing value for {e.full_key} (set it on the command line: {e.full_key}=...)") from None
    if cfg.model.name == "fm" and int(cfg.model.k) <= 0:
        raise ConfigError(f"model.k={cfg.model.k}: must be a positive integer")
    if cfg.model.name not in ("lr", "fm"):
        raise ConfigError(f"model.name={cfg.model.name!r}: unknown model (lr or fm)")
    if int(cfg.train.batch_size) <= 0:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size}: must be > 0")
    if int(cfg.train.epochs) <= 0:
        raise ConfigError(f"train.epochs={cfg.train.epochs}: must be > 0")
