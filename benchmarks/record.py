"""Where the benchmarks keep what they measured: benchmarks/results/ and, when a run names one, a second
folder (--out-dir). Scripts rewrite their file after every row, so a run cut short keeps its rows."""
from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def write(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    """Write `payload` as results/<name> (and out_dir/<name>); returns the results path."""
    for folder in {RESULTS, *([out_dir] if out_dir else [])}:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(placeless(payload), indent=1, default=str) + "\n")
    return RESULTS / name


def card_slug(card: str) -> str:
    """A card's name as it stands in result file names: 'NVIDIA H100 80GB HBM3' -> 'NVIDIA_H100_80GB_HBM3'."""
    return re.sub(r"[^A-Za-z0-9]+", "_", card)


def arguments(args: argparse.Namespace) -> dict:
    """A run's arguments as recorded: all but the output folder, which names a place on one machine."""
    return {k: v for k, v in vars(args).items() if k != "out_dir"}


def placeless(value):
    """`value` with every string under this machine's temporary folder written as $TMPDIR/…: a result
    names no place on the machine that measured it."""
    if isinstance(value, dict):
        return {k: placeless(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [placeless(v) for v in value]
    if isinstance(value, (str, Path)):
        text, tmp = str(value), tempfile.gettempdir().rstrip("/") + "/"
        return "$TMPDIR/" + text[len(tmp):] if text.startswith(tmp) else value
    return value
