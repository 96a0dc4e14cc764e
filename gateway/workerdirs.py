"""The data dirs of ``symbi serve --workers N`` (``gateway.server.workers``): each worker keeps
its audit chain, audit key and embedded stores in ``<data_dir>/worker-<i>``, and
``<data_dir>`` itself holds none of them.

An operator command that works on the data dir's own files (``symbi audit init|verify|tail|
query|export|report|checkpoint|rotate-key``, ``symbi knowledge``, ``symbi memory`` on the
embedded store) would, on such a config, make or read files no worker uses: a signing key
no worker signs with (and a key id to pin that pins nothing), a knowledge base no worker
searches. Those commands refuse (``ConfigError`` naming ``gateway.data_dir``) and say what
acts on the workers instead; ``symbi audit init --workers N`` makes every worker's key.
"""

from __future__ import annotations

from pathlib import Path

from gateway.config.model import Config
from gateway.errors import ConfigError


def worker_data_dir(data_dir: Path, i: int) -> Path:
    """Worker ``i``'s data dir: its own audit chain and keys, as a replica's."""
    return Path(data_dir) / f"worker-{i}"


def serves_workers(cfg: Config) -> bool:
    """Whether ``cfg``'s data dir is a ``symbi serve --workers`` supervisor's (its first
    worker's folder is in it)."""
    return worker_data_dir(cfg.data_dir, 0).is_dir()


def refuse_on_workers_dir(cfg: Config, what: str, instead: str) -> None:
    """Raise ``ConfigError`` when ``what`` would act on a ``--workers`` supervisor's data dir.

    Raises:
        ConfigError: naming gateway.data_dir, the workers' folders and ``instead``.
    """
    if serves_workers(cfg):
        raise ConfigError(
            f"gateway.data_dir (SYMBI_DATA_DIR) {cfg.data_dir} is the data dir of `symbi serve --workers`: "
            f"each worker keeps its own in {worker_data_dir(cfg.data_dir, 0)}, ... and {what} would act on "
            f"files no worker uses; {instead}"
        )
