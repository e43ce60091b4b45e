"""A sweep's study by name: what `status`, `list`, `pareto`, `recommend`, `cancel` and `sync` need of it.

Kept apart from the driver, whose imports (Ray, MLflow, the training code) would add seconds to each of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from lrkv.kernels import ConfigError

from .stores import Stores, redact

if TYPE_CHECKING:
    from .spec import SweepSpec


class SweepError(ConfigError):
    """A sweep that cannot start as asked (exists already, is running elsewhere, storage unreachable)."""


def open_study(stores: Stores, name: str) -> optuna.Study:
    if stores.local and not Path(stores.study_url).exists():  # reading creates nothing
        raise SweepError("name", f"an existing sweep in {redact(stores.study_url)}", name)
    try:
        return optuna.load_study(study_name=name, storage=stores.optuna_storage())
    except KeyError:
        raise SweepError("name", f"an existing sweep in {redact(stores.study_url)}", name) from None


def study_spec(study: optuna.Study) -> SweepSpec:
    """The spec the sweep was started with."""
    from .spec import parse_spec  # brings in the data and training config, which reading a study does not need
    return parse_spec(study.user_attrs["spec"], source=f"study {study.study_name}")
