"""Where a sweep keeps its state: the Optuna study storage and the MLflow tracking store.

Embedded default: one workspace folder (`./lrkv-runs`) with an Optuna journal file and an MLflow
SQLite store. The journal is an append-only log written under a file lock: several processes
(the driver, `lrkv sweep status`, `cancel`, a dashboard) can read and write it safely, and a process
killed mid-write leaves at most an incomplete last record, which readers skip — SQLite would make
concurrent writers wait on one database lock and fail with "database is locked" under contention.
For a cluster, any SQLAlchemy URL (PostgreSQL) and an MLflow tracking URI take their place.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from lrkv.kernels import ConfigError

DEFAULT_WORKSPACE = "lrkv-runs"
RETRY_SECONDS = 300  # how long a store call keeps retrying while the database restarts
RETRY_FIRST_DELAY = 0.5  # seconds before the first retry; each further one waits twice as long, up to 8 s
log = logging.getLogger("lrkv.stores")


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
        try:
            return ResilientRDBStorage(self.study_url, engine_kwargs={"pool_pre_ping": True})
        except Exception as exc:  # unreachable, bad credentials, unknown dialect: one line, password hidden
            raise ConfigError("--storage", "a reachable database (SQLAlchemy URL) or a journal file path",
                              f"{redact(self.study_url)} ({type(exc).__name__}: {_first_line(exc)})") from None

    @property
    def artifact_root(self) -> str | None:
        """Where a local MLflow store keeps artifacts (beside it, not in the working directory);
        a tracking server decides for itself."""
        if self.tracking_uri.startswith("sqlite:///"):
            return (Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        return None

    @contextlib.contextmanager
    def tracking_lock(self):
        """Serialise opening a local MLflow SQLite store: its first open runs schema migrations,
        which fail when several drivers start at once on a fresh workspace."""
        if not self.tracking_uri.startswith("sqlite:///"):
            yield
            return
        lock = Path(self.tracking_uri.removeprefix("sqlite:///")).with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def local_tracking_usable(self) -> bool:
        """A local SQLite tracking store whose file (or, before its first use, folder) is writable here, so
        that opening it can wait until the sweep is accepted: only a damaged file or a full disk fails then."""
        if not self.tracking_uri.startswith("sqlite:///"):
            return False
        path = Path(self.tracking_uri.removeprefix("sqlite:///"))
        if path.exists():
            return path.is_file() and os.access(path, os.R_OK | os.W_OK)
        return path.parent.is_dir() and os.access(path.parent, os.W_OK)

    def prepare(self) -> None:
        """Create the workspace folder the local stores live in (only when a sweep starts)."""
        if self.local or self.tracking_uri.startswith("sqlite:///"):
            self.workspace.mkdir(parents=True, exist_ok=True)


# What a spec's storage section may name (checked when the spec loads, before any store is opened).
STUDY_FORMS = "a SQLAlchemy URL (dialect[+driver]://user@host[:port]/db or sqlite:///file) or a journal file path"
TRACKING_FORMS = ("an MLflow tracking URI: http(s)://host[:port], sqlite:///file, a postgresql/mysql/mssql URL, "
                  "file:/path or databricks")
STUDY_DIALECTS = {"postgresql", "mysql", "mariadb", "sqlite", "oracle", "mssql"}  # SQLAlchemy's own
TRACKING_DIALECTS = {"postgresql", "mysql", "sqlite", "mssql"}                  # MLflow's database backends
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def valid_study_url(url: str) -> bool:
    """A database URL Optuna can open, or a path without a scheme (a journal file): a `word:` prefix is a
    mistyped URL rather than a file name."""
    return bool(url.strip()) and (not _SCHEME.match(url) or _database_url(url, STUDY_DIALECTS))


def valid_tracking_uri(uri: str) -> bool:
    """A URI MLflow can track to: a server, a database (as for the study), a file store or Databricks."""
    scheme = uri.partition(":")[0].lower() if _SCHEME.match(uri) else ""
    parts = urlsplit(uri)
    if scheme in ("http", "https"):
        try:
            return bool(parts.hostname) and parts.port != 0  # .port raises on a non-numeric or > 65535 port
        except ValueError:
            return False
    if scheme == "file":
        return bool(parts.path)
    return uri == "databricks" or scheme == "databricks" or _database_url(uri, TRACKING_DIALECTS)


def _database_url(url: str, dialects: set[str]) -> bool:
    """A SQLAlchemy URL of a known dialect and driver, with a valid port, naming a server (or a sqlite file:
    an in-memory database would lose the sweep's state)."""
    try:
        parsed = make_url(url)
        parsed.get_dialect()  # an unknown dialect or driver (`postgres://`, `postgresql+nodriver://`) raises here
    except (sqlalchemy.exc.ArgumentError, ValueError, ImportError):
        return False
    if parsed.get_backend_name() not in dialects or not 0 < (parsed.port or 1) < 65536:
        return False
    if parsed.get_backend_name() == "sqlite":
        return parsed.database not in (None, "", ":memory:")
    return bool(parsed.host or parsed.query.get("host"))  # ?host=/run/postgresql: a Unix socket


def redact(url: str) -> str:
    """A URL with its password replaced, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _first_line(exc: BaseException) -> str:
    return redact((str(exc).strip().splitlines() or [""])[0])[:200]


def _chain(exc: BaseException | None):
    """An error and the ones it was raised from, outermost first (Optuna wraps the driver's error,
    sometimes twice: StorageInternalError <- PendingRollbackError <- OperationalError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _transient(exc: BaseException) -> bool:
    """A lost connection (the database restarting), as opposed to a wrong query or a conflict."""
    for e in _chain(exc):
        if isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                          sqlalchemy.exc.PendingRollbackError)):  # the last: raised only after a connection died
            return True
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return True
    return False


def _retrying(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        delay, deadline = RETRY_FIRST_DELAY, time.monotonic() + RETRY_SECONDS
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if not _transient(exc) or time.monotonic() > deadline:
                    raise
                root = list(_chain(exc))[-1]
                log.warning("study storage unreachable (%s); retrying in %.1f s", _first_line(root), delay)
                self.scoped_session.remove()  # a session whose connection died cannot be reused
                time.sleep(delay)
                delay = min(2 * delay, 8.0)
    return call


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose calls survive the database restarting: a lost connection is retried
    with exponential backoff (up to RETRY_SECONDS), so a sweep rides out a PostgreSQL restart."""


# Every call that is one whole transaction: the public API and the private ones Optuna's cache layer
# calls (helpers that run inside another call's transaction must not be retried on their own).
_WHOLE_CALLS = ("_create_new_trial", "_get_trials", "_set_trial_param", "_get_best_trial_id", "_get_stale_trial_ids")
for _name, _fn in vars(optuna.storages.RDBStorage).items():
    if isinstance(_fn, (staticmethod, classmethod)) or not callable(_fn):
        continue
    if not _name.startswith("_") or _name in _WHOLE_CALLS:
        setattr(ResilientRDBStorage, _name, _retrying(_fn))
