from pathlib import Path

import pytest

from lrkv.workers.config import TrialConfig

CORPUS = Path(__file__).parents[1] / "data" / "corpus"


def tiny_trial(tmp_path: Path, kind: str = "lrkv", rank: int = 8, n_layers: int = 2, **train) -> TrialConfig:
    """A trial small enough for a few seconds on two CPU cores, on the fixed test corpus."""
    attention = {"kind": kind, "d_model": 64, "n_heads": 4}
    if kind == "lrkv":
        attention["rank"] = rank
    if kind == "gqa":
        attention["n_kv_heads"] = 2
    return TrialConfig.from_dict({
        "model": {"n_layers": n_layers, "attention": attention},
        "data": {"source": str(CORPUS), "seq_len": 64, "cache_dir": str(tmp_path / "cache")},
        "train": {"tokens": 64 * 8 * 12, "batch_size": 8, "eval_every": 4, "eval_blocks": 16, **train},
        "seed": 0,
    })


@pytest.fixture
def trial(tmp_path) -> TrialConfig:
    return tiny_trial(tmp_path)
