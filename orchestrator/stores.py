"""Where a sweep keeps its state: the Optuna study storage and the MLflow tracking store.

Embedded default: one workspace folder (`./lrkv-runs`) with an Optuna journal file and an MLflow
SQLite store. The journal is an append-only log written under a file lock: several processes
(the driver, `lrkv sweep status`, `cancel`, a dashboard) can read and write it safely, and a process
killed mid-write leaves at most an incomplete last record, which readers skip — SQLite would make
concurrent writers wait on one database lock and fail with "database is locked" under contention.
For a cluster, any SQLAlchemy URL (PostgreSQL) and an MLflow tracking URI take their place.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import optuna

DEFAULT_WORKSPACE = "lrkv-runs"


@dataclass(frozen=True)
class Stores:
    study_url: str      # SQLAlchemy URL, or a path to an Optuna journal file
    tracking_uri: str   # MLflow tracking URI
    workspace: Path

    @classmethod
    def resolve(cls, workspace: str | Path | None = None, storage: str | None = None,
                tracking_uri: str | None = None, spec_storage=None) -> Stores:
        """Flags win over environment variables, which win over the spec, which wins over defaults."""
        ws = Path(workspace or os.environ.get("LRKV_WORKSPACE") or DEFAULT_WORKSPACE).absolute()
        study = storage or os.environ.get("LRKV_STORAGE") or (spec_storage and spec_storage.study) \
            or str(ws / "optuna.journal")
        tracking = tracking_uri or os.environ.get("LRKV_TRACKING_URI") or os.environ.get("MLFLOW_TRACKING_URI") \
            or (spec_storage and spec_storage.tracking_uri) or f"sqlite:///{ws / 'mlflow.db'}"
        return cls(study, tracking, ws)

    @property
    def local(self) -> bool:
        return "://" not in self.study_url

    def optuna_storage(self) -> optuna.storages.BaseStorage:
        if self.local:
            from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
            Path(self.study_url).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(
                JournalFileBackend(self.study_url, lock_obj=JournalFileOpenLock(self.study_url)))
        return optuna.storages.RDBStorage(self.study_url, heartbeat_interval=None,
                                          engine_kwargs={"pool_pre_ping": True})

    @property
    def artifact_root(self) -> str | None:
        """Where a local MLflow store keeps artifacts (beside it, not in the working directory);
        a tracking server decides for itself."""
        if self.tracking_uri.startswith("sqlite:///"):
            return (Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        return None

    def prepare(self) -> None:
        """Create the workspace folder the local stores live in (only when a sweep starts)."""
        if self.local or self.tracking_uri.startswith("sqlite:///"):
            self.workspace.mkdir(parents=True, exist_ok=True)


def redact(url: str) -> str:
    """A URL with its password replaced, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)
