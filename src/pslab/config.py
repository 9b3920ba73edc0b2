"""Composing the run's config with hydra's compose API (no hydra.main: the launcher,
not hydra, owns the run directory, so ranks never race to create output folders).

`load_config` also checks every value a rank would otherwise trip over deep inside a
backend (`check`): the launcher and every rank run the same checks, so a config error
is one line naming the key, found before mpirun starts. Checks that need the rank count
or the filesystem are the launcher's (pslab.launcher.checks).
"""
from __future__ import annotations

import math
import re
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
        raise ConfigError(hydra_message(str(e), overrides)) from None
    check(cfg)
    return cfg


def hydra_message(text: str, overrides: list[str]) -> str:
    """Hydra's multi-line composition errors as one line that says what to do."""
    m = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if m:
        group, name = m.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        return f"{group}={name}: no such {group} (choose {', '.join(options)})" if options else \
            f"{group}={name}: no such {group} (see conf/{group}/)"
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        given = next((o for o in overrides if o.split("=", 1)[0] == key), key)
        return f"{given}: no key {key} in this config (check the spelling, or the group that has it, e.g. " \
               "model.k needs model=fm)"
    lines = [line.strip() for line in text.splitlines() if line.strip() and "hydra.cc/docs" not in line]
    bad = unparsable(overrides)
    if bad:
        return f"{bad}: cannot parse this override ({lines[0] if lines else text}); KEY=VALUE, lists as " \
               "KEY=[a,b], quoted for the shell"
    return "config: " + " ".join(lines[:2])


def unparsable(overrides: list[str]) -> str | None:
    """The first override hydra's grammar rejects, if any."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except HydraException:
            return o
    return None


# ------------------------------------------------------------------ value checks


def _value(cfg, key: str):
    return OmegaConf.select(cfg, key, default=None)


def number(cfg, key: str, lo=None, hi=None, integer: bool = False, lo_open: bool = False,
           hi_open: bool = False, allow_none: bool = False, hint: str = ""):
    """cfg[key] as a number within [lo, hi] (open ends with lo_open / hi_open), or a
    ConfigError naming the key. None is accepted only with allow_none."""
    v = _value(cfg, key)
    if v is None and allow_none:
        return None
    want = "an integer" if integer else "a number"
    bounds = []
    if lo is not None:
        bounds.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        bounds.append(f"{'<' if hi_open else '<='} {hi:g}")
    need = f"must be {want}" + (f" {' and '.join(bounds)}" if bounds else "") + (f" ({hint})" if hint else "")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()) \
            or not math.isfinite(float(v)):
        raise ConfigError(f"{key}={v!r}: {need}")
    if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and (v >= hi if hi_open else v > hi)):
        raise ConfigError(f"{key}={v!r}: {need}")
    return int(v) if integer else float(v)


def choice(cfg, key: str, options: tuple[str, ...]) -> str:
    v = _value(cfg, key)
    if v not in options:
        raise ConfigError(f"{key}={v!r}: choose {' | '.join(options)}")
    return v


def check(cfg: DictConfig) -> None:
    """Catch the mistakes that would otherwise surface deep inside a rank."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        raise ConfigError(f"config: missing value for {e.full_key} (set it on the command line: {e.full_key}=...)") from None
    number(cfg, "run.deadline_s", lo=0, lo_open=True, hint="seconds: the launcher ends the job after this")
    number(cfg, "train.batch_size", lo=1, integer=True)
    number(cfg, "train.epochs", lo=1, integer=True)
    number(cfg, "train.log_every", lo=1, integer=True)
    number(cfg, "train.eval_every", lo=0, integer=True, hint="0: at each epoch's end")
    choice(cfg, "model.name", ("lr", "fm"))
    if cfg.model.name == "fm":
        number(cfg, "model.k", lo=1, integer=True)
    check_optim(cfg)
    check_data(cfg.data)
    check_backend(cfg)


def check_optim(cfg) -> None:
    name = choice(cfg, "optim.name", ("sgd", "adagrad", "ftrl"))
    if name in ("sgd", "adagrad"):
        number(cfg, "optim.lr", lo=0, lo_open=True)
    if name == "adagrad":
        number(cfg, "optim.eps", lo=0, lo_open=True)
    if name == "ftrl":
        number(cfg, "optim.alpha", lo=0, lo_open=True)
        number(cfg, "optim.beta", lo=0)
        number(cfg, "optim.l1", lo=0)
    number(cfg, "optim.l2", lo=0, allow_none=True)


def check_data(data) -> None:
    """The data group's settings (also called by pslab.data.load_dataset, which runs
    without the rest of the config in the unit tests)."""
    cfg = OmegaConf.create({"data": data})
    fmt = choice(cfg, "data.format", ("criteo", "libsvm", "csv", "synthetic"))
    number(cfg, "data.hash_bits", lo=1, hi=40, integer=True, allow_none=True,
           hint="fold keys into 2^b slots; null keeps 64-bit keys")
    number(cfg, "data.block_rows", lo=1, integer=True, allow_none=True)
    if fmt == "synthetic":
        for key in ("rows", "test_rows", "nnz", "n_keys"):
            number(cfg, f"data.{key}", lo=1, integer=True)
        return
    if not _value(cfg, "data.test_path"):
        if _value(cfg, "data.test_fraction") is None:
            raise ConfigError("no held-out set: set data.test_path=FILE or data.test_fraction=F (0 < F < 1)")
        number(cfg, "data.test_fraction", lo=0, hi=1, lo_open=True, hi_open=True,
               hint="the last fraction of the rows, in file order, held out for testing")
    if fmt == "csv":
        if not _value(cfg, "data.label"):
            raise ConfigError("data.label is not set: name the label column (data.label=COLUMN)")
        if not (_value(cfg, "data.categorical") or _value(cfg, "data.numeric")):
            raise ConfigError("data.categorical and data.numeric are both empty: name some feature columns "
                              "(data.categorical=[a,b] data.numeric=[c])")
        sep = _value(cfg, "data.sep")
        if not isinstance(sep, str) or len(sep) != 1:
            raise ConfigError(f"data.sep={sep!r}: must be one character (e.g. data.sep=',' or data.sep='\\t')")


def check_backend(cfg) -> None:
    name = choice(cfg, "backend.name", ("local", "allreduce", "ps"))
    if name == "local":
        number(cfg, "backend.lanes", lo=1, integer=True, allow_none=True)
    elif name == "allreduce":
        mode = choice(cfg, "backend.mode", ("dense", "sparse"))
        if mode == "dense" and _value(cfg, "data.hash_bits") is None:
            raise ConfigError("backend.mode=dense needs folded keys: set data.hash_bits=b (e.g. 20), "
                              "or use backend.mode=sparse for 64-bit keys")
        number(cfg, "backend.hang_timeout_s", lo=0, lo_open=True, allow_none=True,
               hint="seconds without heartbeats before a rank is declared dead; null turns the detector off")
        number(cfg, "backend.checkpoint_every", lo=0, integer=True, allow_none=True,
               hint="steps between checkpoints; 0 for none")
        number(cfg, "backend.checkpoint_every_s", lo=0, lo_open=True, allow_none=True,
               hint="seconds between checkpoints; null for none")
        number(cfg, "backend.step_timeout_s", lo=0, lo_open=True, allow_none=True,
               hint="seconds a collective may take before the step watchdog acts; null turns it off")
    else:
        servers = number(cfg, "backend.servers", lo=1, integer=True)
        number(cfg, "backend.replication", lo=1, hi=servers, integer=True,
               hint=f"copies of each key, on distinct servers: 1..backend.servers={servers}")
        consistency = choice(cfg, "backend.consistency", ("bsp", "ssp", "asp"))
        if consistency == "ssp":
            number(cfg, "backend.staleness", lo=0, integer=True)
        hb = number(cfg, "backend.heartbeat_timeout_s", lo=0, lo_open=True, allow_none=True)
        for key in ("request_timeout_s", "idle_timeout_s"):
            # a request (and a wait for the coordinator) must outlast the detection of a
            # dead server, or workers give up on what failover would re-route
            number(cfg, f"backend.{key}", lo=2 * hb if hb else 0, lo_open=not hb, allow_none=True,
                   hint=f"at least twice backend.heartbeat_timeout_s={hb:g}" if hb else "")
        number(cfg, "backend.checkpoint_every", lo=0, integer=True, allow_none=True)
