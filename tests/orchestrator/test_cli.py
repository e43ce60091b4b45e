"""The `lrkv` command as a user runs it: real processes, exit codes, one-line errors, JSON output."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..workers.conftest import CORPUS

LRKV = str(Path(sys.executable).parent / "lrkv")


def lrkv(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([LRKV, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_cache_calculator_matches_the_paper_formula():
    done = lrkv("cache", "--kind", "lrkv", "--n-layers", "24", "--n-heads", "16", "--head-dim", "128",
                "--rank", "64", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["bytes_per_token"] == 2 * 24 * (128 + 16 * 64) * 2 == 110592
    assert result["ratio_vs_mha"] == 0.5625


def test_cache_calculator_counts_cached_key_scales():
    done = lrkv("cache", "--kind", "lrkv", "--n-layers", "24", "--n-heads", "16", "--head-dim", "128",
                "--rank", "64", "--key-scales", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["key_scales"] is True
    assert result["bytes_per_token"] == 24 * (2 * (128 + 16 * 64) + 16) * 2


def test_cache_table_and_totals():
    done = lrkv("cache", "--kind", "gqa", "--n-kv-heads", "4", "--n-layers", "2", "--n-heads", "16",
                "--head-dim", "128", "--batch", "8", "--context", "1024", "--json")
    result = json.loads(done.stdout)
    assert result["bytes_per_token"] == 2 * 2 * 4 * 128 * 2
    assert result["total_bytes"] == result["bytes_per_token"] * 8 * 1024
    assert result["ratio_vs_mha"] == 0.25
    table = lrkv("cache", "--kind", "mla", "--n-layers", "2")
    assert table.returncode == 0 and "ratio vs MHA" in table.stdout


@pytest.mark.parametrize("args,field", [
    (["cache", "--kind", "bogus"], "kind"),
    (["cache", "--rank", "200"], "rank"),
    (["cache", "--dtype", "int3"], "--dtype"),
    (["cache", "--kind", "mha", "--key-scales"], "key_scales"),
    (["train", "--n-heads", "5"], "model.attention.n_heads"),
    (["train", "--rank", "33"], "model.attention.rank"),
    (["train", "--kind", "mqa", "--rank", "4"], "model.attention.rank"),
    (["train", "--data", "/nonexistent/corpus.txt"], "data.source"),
    (["train", "--tokenizer", "wordpiece"], "data.tokenizer"),
    (["train", "--config", "/nonexistent/trial.yaml"], "--config"),
])
def test_bad_input_is_one_line_exit_2(args, field, tmp_path):
    done = lrkv(*args, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: expected "), done.stderr
    assert not (tmp_path / "lrkv-runs").exists()  # nothing half-written


@pytest.mark.parametrize("args, line", [
    (["cache", "--n-heads", "x"], "error: --n-heads: Input should be a valid integer"),
    (["cache", "--bogus"], "error: --bogus: expected one of the command's options (see --help)"),
    (["sweep", "run"], "error: spec_file: expected a value, got none"),
    (["sweep", "submit", "spec.yaml"], "error: --address: expected a value (or RAY_ADDRESS), got none"),
])
def test_usage_errors_are_one_line_exit_2(args, line, tmp_path):
    """What the argument parser refuses (an unknown option, a missing one, a value of the wrong type)
    reads like every other bad input: one line naming the option, exit code 2."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = lrkv(*args, cwd=tmp_path, env=env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), done.stderr
    assert not list(tmp_path.iterdir())


def test_help_names_the_environment_variables_of_the_stores(tmp_path):
    """--help shows where each store comes from when no flag is given (help text is rendered as markup, so
    text in square brackets would vanish)."""
    done = lrkv("sweep", "run", "--help", cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    for name in ("LRKV_STORAGE", "LRKV_TRACKING_URI", "LRKV_WORKSPACE", "./lrkv-runs"):
        assert name in done.stdout, name


def test_bad_yaml_files(tmp_path):
    cases = {"list.yaml": b"- 1\n- 2\n", "binary.yaml": b"\xff\xfe\x00bad", "extra.yaml": b"model: {n_layers: 2, attention: {kind: mha, d_model: 64, n_heads: 4}}\nbogus: 1\n",
             "empty_corpus.yaml": b"model: {n_layers: 1, attention: {kind: mha, d_model: 32, n_heads: 2}}\ndata: {source: empty}\n"}
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    for name, body in cases.items():
        (tmp_path / name).write_bytes(body)
        done = lrkv("train", "--config", name, cwd=tmp_path)
        assert done.returncode == 2, (name, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: "), (name, done.stderr)


def test_train_from_yaml_with_flag_override_writes_record(tmp_path):
    (tmp_path / "trial.yaml").write_text(
        "model: {n_layers: 1, attention: {kind: lrkv, d_model: 32, n_heads: 2, rank: 4}}\n"
        f"data: {{source: '{CORPUS}', seq_len: 32, cache_dir: cache}}\n"
        "train: {tokens: 2048, batch_size: 8, eval_every: 4, eval_blocks: 4}\n")
    done = lrkv("train", "--config", "trial.yaml", "--rank", "8", "--out", "rec.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "rec.json").read_text())
    assert record["config"]["model"]["attention"]["rank"] == 8
    assert record["kv_cache_bytes_per_token"] == 2 * (16 + 2 * 8) * 2
    assert "val bits/byte" in done.stdout


def test_output_piped_into_a_reader_that_stops_early_leaves_no_traceback():
    """`lrkv … | head -2`: the reader closes the pipe mid-output, and the command ends without a traceback."""
    done = subprocess.run(f"'{LRKV}' --help | head -2", shell=True, capture_output=True, text=True, timeout=120)
    assert "Usage" in done.stdout and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_commands_that_read_a_study_load_neither_torch_ray_nor_mlflow():
    """status, list, pareto, recommend and cancel only read specs and studies: each of the three costs seconds."""
    modules = ("lrkv.orchestrator.cli", "lrkv.orchestrator.study", "lrkv.orchestrator.view",
               "lrkv.dashboards.recommend", "lrkv.dashboards.report")
    probe = (f"import importlib, sys; [importlib.import_module(m) for m in {modules}]; "
             "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
