"""`lrkv`: the command line. Bad input exits with code 2 and one line naming the field and what was expected."""
from __future__ import annotations

import copy
import functools
import gc
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from lrkv.kernels import KINDS, AttentionSpec, ConfigError

app = typer.Typer(help="Rank sweeps for low-rank key-value (LRKV) attention.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
console = Console()
DTYPES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1}
WORKSPACE = Path(os.environ.get("LRKV_WORKSPACE", "lrkv-runs"))


def user_errors(fn):
    """Turn a ConfigError into `error: <field>: expected …` on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    return wrapper


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write the file whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(payload, tmp, indent=2, default=str)
    os.replace(tmp.name, path)


@app.command()
@user_errors
def cache(
    kind: str = typer.Option("lrkv", help=f"Attention kind: {', '.join(KINDS)}."),
    n_layers: int = typer.Option(24, help="Layers."),
    n_heads: int = typer.Option(16, help="Query heads."),
    head_dim: int = typer.Option(128, help="Head dimension d_h."),
    d_model: int | None = typer.Option(None, help="Model width (default n_heads × head_dim)."),
    n_kv_heads: int | None = typer.Option(None, help="K/V heads (gqa)."),
    rank: int = typer.Option(0, help="LRKV residual rank r."),
    kv_latent_dim: int | None = typer.Option(None, help="MLA latent d_c (default 4·d_h)."),
    rope_dim: int | None = typer.Option(None, help="MLA decoupled RoPE dim d_r (default d_h/2)."),
    key_scales: bool = typer.Option(False, "--key-scales", help="LRKV also caches each key's 1/rms (H values)."),
    batch: int = typer.Option(1, min=1, help="Sequences."),
    context: int = typer.Option(4096, min=1, help="Tokens per sequence."),
    dtype: str = typer.Option("bf16", help=f"Cache dtype: {', '.join(DTYPES)}."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object."),
):
    """KV-cache calculator: bytes per token and in total, and the ratio to MHA of the same shape."""
    if dtype not in DTYPES:
        raise ConfigError("--dtype", f"one of {', '.join(DTYPES)}", dtype)
    spec = AttentionSpec(kind, d_model or n_heads * head_dim, n_heads, head_dim, n_kv_heads, rank,
                         kv_latent_dim, rope_dim, key_scales=key_scales)
    item = DTYPES[dtype]
    per_token = spec.cache_values_per_token() * n_layers * item
    mha = spec.mha_equivalent().cache_values_per_token() * n_layers * item
    result = {
        "kind": spec.kind, "label": spec.label, "dtype": dtype, "n_layers": n_layers,
        "n_heads": n_heads, "head_dim": spec.head_dim, "n_kv_heads": spec.n_kv_heads, "rank": spec.rank,
        "key_scales": spec.key_scales,
        "values_per_token_per_layer": spec.cache_values_per_token(),
        "bytes_per_token_per_layer": spec.cache_values_per_token() * item,
        "bytes_per_token": per_token, "batch": batch, "context": context,
        "total_bytes": per_token * batch * context, "mha_bytes_per_token": mha,
        "ratio_vs_mha": spec.cache_ratio_vs_mha(),
    }
    if as_json:
        typer.echo(json.dumps(result))
        return
    table = Table(title=f"KV cache · {spec.label} · {n_layers} layers · {n_heads}×{spec.head_dim} · {dtype}")
    table.add_column("")
    table.add_column(spec.label, justify="right")
    table.add_column("mha", justify="right")
    table.add_row("bytes / token / layer", f"{spec.cache_values_per_token() * item:,}", f"{mha // n_layers:,}")
    table.add_row("bytes / token", f"{per_token:,}", f"{mha:,}")
    table.add_row(f"total ({batch} × {context:,} tokens)", _human(per_token * batch * context), _human(mha * batch * context))
    table.add_row("ratio vs MHA", f"{result['ratio_vs_mha']:.4f}", "1.0000")
    console.print(table)


sweep_app = typer.Typer(help="Run and manage rank sweeps.", no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")
StorageOpt = typer.Option(None, "--storage", help="Optuna storage: SQLAlchemy URL or journal file (env LRKV_STORAGE).")
TrackingOpt = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (env LRKV_TRACKING_URI).")
WorkspaceOpt = typer.Option(None, "--workspace",
                            help="Folder of the embedded stores (env LRKV_WORKSPACE; default ./lrkv-runs).")
HostOpt = typer.Option("127.0.0.1", help="Interface to bind (local only by default).")
AddressOpt = typer.Option(None, "--address", envvar="RAY_ADDRESS", help="Ray cluster address; default: a local Ray.")


def _stores(workspace, storage, tracking_uri, spec=None):
    from lrkv.orchestrator.stores import Stores
    return Stores.resolve(workspace, storage, tracking_uri, spec.storage if spec else None)


def _drive(driver) -> None:
    from lrkv.orchestrator.stores import redact
    from lrkv.orchestrator.view import SweepView, front_tables
    with SweepView(console) as view:
        driver.view = view
        study = driver.run()
    for table in front_tables(study):
        console.print(table)
    if driver.gap:
        console.print(f"[yellow]MLflow lacks {driver.gap} trial(s) of this sweep (the study has them): "
                      f"run `lrkv sweep sync {study.study_name}` when {redact(driver.stores.tracking_uri)} is back")
    console.print(f"MLflow: [bold]lrkv ui[/] (or mlflow ui --backend-store-uri {redact(driver.stores.tracking_uri)}) → "
                  f"experiment [bold]{study.study_name}[/], parent run {study.user_attrs['mlflow_parent_run_id']}")


@sweep_app.command("run")
@user_errors
def sweep_run(spec_file: Path = typer.Argument(..., help="Sweep spec (YAML)."), workspace: Path | None = WorkspaceOpt,
              storage: str | None = StorageOpt, tracking_uri: str | None = TrackingOpt, address: str | None = AddressOpt,
              if_exists: str = typer.Option("fail", help="When the sweep's name exists: fail, or resume it "
                                                         "(only if its spec is the same)."),
              stores_file: Path | None = typer.Option(None, "--stores-file", hidden=True,
                                                      help="JSON {storage, tracking_uri} (what submit sends)")):
    """Run a sweep to its end here (local Ray unless --address), with a live view."""
    from lrkv.orchestrator.spec import load_spec
    if if_exists not in ("fail", "resume"):
        raise ConfigError("--if-exists", "fail or resume", if_exists)
    spec = load_spec(spec_file)  # before the heavy imports: a bad spec answers at once
    from lrkv.orchestrator.driver import SweepDriver, connect_ray, open_study
    if stores_file:  # submitted: the store addresses (credentials included) travel in a file, not the command
        try:
            sent = json.loads(stores_file.read_text())
        except (OSError, ValueError):
            raise ConfigError("--stores-file", "the store addresses `lrkv sweep submit` sends",
                              str(stores_file)) from None
        finally:
            stores_file.unlink(missing_ok=True)  # the head keeps no unpacked copy
        connect_ray(address, without_job_files=True)  # and the trials run without the job's files
        storage, tracking_uri = storage or sent["storage"], tracking_uri or sent["tracking_uri"]
    stores = _stores(workspace, storage, tracking_uri, spec)
    if if_exists == "resume" and spec.name in _study_names(stores):
        stored = open_study(stores, spec.name).user_attrs.get("digest")
        if stored != spec.digest():
            raise ConfigError(str(spec_file), f"the spec sweep {spec.name!r} was started with (digest {stored})",
                              f"a changed spec (digest {spec.digest()}); give it a new name")
        _drive(SweepDriver.resume(spec.name, stores, address=address))
        return
    _drive(SweepDriver.create(spec, stores, address=address))


@sweep_app.command("submit")
@user_errors
def sweep_submit(spec_file: Path = typer.Argument(..., help="Sweep spec (YAML)."),
                 address: str = typer.Option(..., "--address", envvar="RAY_ADDRESS",
                                              help="Ray dashboard / job API, e.g. http://HEAD:8265."),
                 workspace: Path | None = WorkspaceOpt, storage: str | None = StorageOpt,
                 tracking_uri: str | None = TrackingOpt):
    """Send a sweep to a Ray cluster as a job and return at once; the driver runs on the head node."""
    import secrets
    import shlex
    import shutil
    from lrkv.orchestrator.spec import load_spec
    from lrkv.orchestrator.stores import redact
    from ray.job_submission import JobSubmissionClient
    for logger in [n for n in logging.root.manager.loggerDict if n.startswith("ray")]:
        logging.getLogger(logger).setLevel(logging.WARNING)  # Ray's INFO lines would break the one-line error
    from lrkv.orchestrator.mps import check_mps
    spec = load_spec(spec_file)
    check_mps(spec, address)  # the job's driver would refuse it on the head node: refuse it here
    stores = _stores(workspace, storage, tracking_uri, spec)  # resolved here: the job's folder is temporary
    if os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").exists():
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray clusters require the token by default
    try:
        client = JobSubmissionClient(address)
    except Exception as exc:
        raise ConfigError("--address", "a reachable Ray job API (http://HOST:8265)", f"{address} ({type(exc).__name__})") from None
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(spec_file, Path(folder) / "spec.yaml")
        # The job's entrypoint is shown to anyone who can list jobs: the store addresses, which may hold
        # a password, go in the job's package instead.
        sent = Path(folder) / "stores.json"
        # A nonce makes every package new: Ray reuses an unpacked package of the same content, whose
        # copy of this file the earlier job's driver deleted.
        sent.write_text(json.dumps({"storage": stores.study_url, "tracking_uri": stores.tracking_uri,
                                    "nonce": secrets.token_hex(8)}))
        sent.chmod(0o600)
        entrypoint = shlex.join(["lrkv", "sweep", "run", "spec.yaml", "--stores-file", "stores.json", "--address", "auto"])
        for attempt in range(10):
            try:
                job = client.submit_job(entrypoint=entrypoint, submission_id=f"lrkv-{spec.name}",
                                        runtime_env={"working_dir": folder}, metadata={"lrkv.sweep": spec.name})
                break
            except RuntimeError as exc:
                if "already exists" in str(exc):
                    raise ConfigError("name", "a sweep name not yet submitted to this cluster", spec.name) from None
                if "No available agent" not in str(exc) or attempt == 9:
                    raise
                time.sleep(3)  # a head that has just started: its job agent comes up after the API
    console.print(f"submitted sweep [bold]{spec.name}[/] as Ray job {job} to {address} "
                  f"(study {redact(stores.study_url)}); follow it with `lrkv sweep status {spec.name}`")


@sweep_app.command("resume")
@user_errors
def sweep_resume(name: str, workspace: Path | None = WorkspaceOpt, storage: str | None = StorageOpt,
                 tracking_uri: str | None = TrackingOpt, address: str | None = AddressOpt):
    """Continue a sweep from its study: finished trials stay, interrupted ones run again."""
    from lrkv.orchestrator.driver import SweepDriver
    _drive(SweepDriver.resume(name, _stores(workspace, storage, tracking_uri), address=address))


@sweep_app.command("status")
@user_errors
def sweep_status(name: str | None = typer.Argument(None), workspace: Path | None = WorkspaceOpt,
                 storage: str | None = StorageOpt, as_json: bool = typer.Option(False, "--json")):
    """Trial counts and the current front of one sweep (or of all, without a name)."""
    from lrkv.orchestrator.study import open_study
    from lrkv.orchestrator.view import counts_line, front_tables, trial_counts
    stores = _stores(workspace, storage, None)
    names = [name] if name else _study_names(stores)
    report = {}
    for n in names:
        study = open_study(stores, n)
        budget = study.user_attrs["spec"]["budget"]["trials"]
        report[n] = {"counts": dict(trial_counts(study)), "budget": budget,
                     "driver": study.user_attrs.get("driver"), "cancel_requested": study.user_attrs.get("cancel_requested")}
        if not as_json:
            console.print(counts_line(study, budget))
            for table in front_tables(study):
                console.print(table)
    if as_json:
        typer.echo(json.dumps(report))


@sweep_app.command("list")
@user_errors
def sweep_list(workspace: Path | None = WorkspaceOpt, storage: str | None = StorageOpt):
    """Every sweep in the storage."""
    from lrkv.orchestrator.study import open_study
    from lrkv.orchestrator.view import trial_counts
    stores = _stores(workspace, storage, None)
    table = Table("sweep", "trials done", "budget", "running", "driver")
    for n in _study_names(stores):
        study = open_study(stores, n)
        c = trial_counts(study)
        driver = study.user_attrs.get("driver")
        table.add_row(n, str(c["complete"] + c["pruned"] + c["fail"]), str(study.user_attrs["spec"]["budget"]["trials"]),
                      str(c["running"]), f"pid {driver['pid']} on {driver['host']}" if driver else "—")
    console.print(table)


@sweep_app.command("cancel")
@user_errors
def sweep_cancel(name: str, workspace: Path | None = WorkspaceOpt, storage: str | None = StorageOpt):
    """Ask the sweep's driver to stop: running trials are cancelled and recorded, nothing else starts."""
    from lrkv.orchestrator.study import open_study
    study = open_study(_stores(workspace, storage, None), name)
    study.set_user_attr("cancel_requested", time.time())
    console.print(f"cancel requested for {name}")


@sweep_app.command("sync")
@user_errors
def sweep_sync(name: str, workspace: Path | None = WorkspaceOpt, storage: str | None = StorageOpt,
               tracking_uri: str | None = TrackingOpt):
    """Log to MLflow every finished trial it lacks (after a tracking-server outage), from the study."""
    from lrkv.dashboards.report import log_front
    from lrkv.orchestrator.study import open_study, study_spec
    from lrkv.orchestrator.tracking import Tracker
    stores = _stores(workspace, storage, tracking_uri)
    study = open_study(stores, name)
    tracker = Tracker(stores.tracking_uri, name, stores.artifact_root)
    tracker.sync(study, study_spec(study))
    parent = study.user_attrs["mlflow_parent_run_id"]
    log_front(study, tracker, parent)
    if not study.user_attrs.get("driver"):  # the sweep has ended: its parent run may close
        tracker.finish_parent(parent, "FINISHED")
    console.print(f"MLflow holds every finished trial of {name}")


@app.command()
@user_errors
def pareto(name: str, workspace: Path | None = WorkspaceOpt, storage: str | None = StorageOpt,
           as_json: bool = typer.Option(False, "--json")):
    """The current Pareto front of a sweep, per model size."""
    from lrkv.dashboards.report import front_table
    from lrkv.orchestrator.study import open_study
    from lrkv.orchestrator.view import front_tables
    study = open_study(_stores(workspace, storage, None), name)
    if as_json:
        typer.echo(json.dumps(front_table(study), default=str))
        return
    for table in front_tables(study):
        console.print(table)


@app.command()
@user_errors
def ui(workspace: Path | None = WorkspaceOpt, tracking_uri: str | None = TrackingOpt,
       host: str = HostOpt,
       port: int = typer.Option(5000)):
    """Start the MLflow UI on the workspace's store."""
    import subprocess
    from lrkv.orchestrator.stores import redact
    stores = _stores(workspace, None, tracking_uri)
    console.print(f"MLflow UI on http://{host}:{port} ← {redact(stores.tracking_uri)}")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    raise typer.Exit(subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", stores.tracking_uri,
                                      "--host", host, "--port", str(port), "--workers", "1"], env=env))


def _study_names(stores) -> list[str]:
    import optuna
    if stores.local and not Path(stores.study_url).exists():  # listing creates nothing
        return []
    return sorted(s.study_name for s in optuna.get_all_study_summaries(stores.optuna_storage()))


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n):,} B"
        n /= 1024


# Flag name -> (section, field) of TrialConfig; a flag given on the command line overrides the YAML.
TRAIN_FLAGS = {
    "kind": ("model.attention", "kind"), "d_model": ("model.attention", "d_model"),
    "n_heads": ("model.attention", "n_heads"), "head_dim": ("model.attention", "head_dim"),
    "n_kv_heads": ("model.attention", "n_kv_heads"), "rank": ("model.attention", "rank"),
    "n_layers": ("model", "n_layers"), "data": ("data", "source"), "tokenizer": ("data", "tokenizer"),
    "seq_len": ("data", "seq_len"), "tokens": ("train", "tokens"), "batch_size": ("train", "batch_size"),
    "optimizer": ("train", "optimizer"), "lr": ("train", "lr"), "device": ("train", "device"), "seed": ("", "seed"),
}
# The trial `lrkv train` runs with no config: a small LRKV at r = d_h/2 that trains on 2 CPU cores in about a minute.
DEFAULT_TRIAL = {"model": {"n_layers": 4, "attention": {"kind": "lrkv", "d_model": 128, "n_heads": 4, "rank": 16}},
                 "data": {"seq_len": 128}, "train": {"tokens": 1_000_000, "batch_size": 16, "eval_every": 100}}


def load_yaml(path: Path, field: str) -> dict:
    """A YAML mapping from `path`, or a ConfigError naming `field`."""
    import yaml
    if not path.is_file():
        raise ConfigError(field, "an existing YAML file", str(path))
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(field, "a UTF-8 YAML file", f"{path} ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise ConfigError(field, "a YAML mapping at the top level", f"{path} ({type(raw).__name__})")
    return raw


@app.command()
@user_errors
def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="Trial YAML (model, data, train, seed)."),
    kind: str | None = typer.Option(None, help=f"Attention kind: {', '.join(KINDS)}."),
    d_model: int | None = typer.Option(None), n_layers: int | None = typer.Option(None),
    n_heads: int | None = typer.Option(None), head_dim: int | None = typer.Option(None),
    n_kv_heads: int | None = typer.Option(None), rank: int | None = typer.Option(None),
    data: str | None = typer.Option(None, help="'stdlib' (default), a text/parquet/arrow/jsonl file or folder, or hub:NAME."),
    tokenizer: str | None = typer.Option(None, help="byte (default) or bpe."),
    seq_len: int | None = typer.Option(None), tokens: int | None = typer.Option(None, help="Training tokens."),
    batch_size: int | None = typer.Option(None), optimizer: str | None = typer.Option(None, help="adamw or muon."),
    lr: float | None = typer.Option(None), device: str | None = typer.Option(None, help="auto, cpu or cuda."),
    seed: int | None = typer.Option(None),
    out: Path | None = typer.Option(None, help="Where to write the metrics record (JSON)."),
):
    """Train one model and print its metrics (val bits/byte, cache bytes, FLOPs, tokens/s, head diversity)."""
    from lrkv.workers.config import TrialConfig
    from lrkv.workers.train import train as run_trial

    raw = load_yaml(config, "--config") if config else copy.deepcopy(DEFAULT_TRIAL)
    given = {"kind": kind, "d_model": d_model, "n_heads": n_heads, "head_dim": head_dim, "n_kv_heads": n_kv_heads,
             "rank": rank, "n_layers": n_layers, "data": data, "tokenizer": tokenizer, "seq_len": seq_len,
             "tokens": tokens, "batch_size": batch_size, "optimizer": optimizer, "lr": lr, "device": device, "seed": seed}
    for flag, value in given.items():
        if value is None:
            continue
        section, name = TRAIN_FLAGS[flag]
        node = raw
        for key in filter(None, section.split(".")):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(section, "a mapping", node)
        node[name] = value
    trial = TrialConfig.from_dict(raw)
    record = run_trial(trial, progress=sys.stderr.isatty())
    record["config"] = trial.to_dict()
    out = out or WORKSPACE / "trials" / f"{trial.model.attention.label}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json_atomic(out, record)
    console.print(metrics_table(record, title=f"trial · {trial.model.attention.label} · {record['data']}"))
    console.print(f"record: {out}")


def metrics_table(record: dict, title: str) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [("val bits/byte", f"{record['val_bpb']:.4f}"), ("train loss (nats/token)", f"{record['train_loss']:.4f}"),
            ("tokens", f"{record['tokens']:,}"), ("steps", f"{record['steps']:,}"),
            ("wall seconds", f"{record['wall_seconds']:.1f}"), ("tokens / s", f"{record['tokens_per_s']:,.0f}"),
            ("MFU", "—" if record["mfu"] is None else f"{record['mfu']:.1%}"),
            ("peak memory", _human(record["peak_memory_bytes"])),
            ("KV cache bytes / token (bf16)", f"{record['kv_cache_bytes_per_token']:,}"),
            ("KV cache vs MHA", f"{record['kv_cache_ratio_vs_mha']:.3f}"),
            ("train FLOPs / token", f"{record['flops_per_token']:,}"), ("params", f"{record['params']:,}"),
            ("head diversity (eff. rank)", f"{record['head_eff_rank']:.2f} ({record['head_eff_rank_frac']:.0%} of max)"),
            ("device", record["device"])]
    for name, value in rows:
        table.add_row(name, value)
    return table


REFUSED = 3  # `lrkv recommend`'s exit code when the evidence is too thin to answer


@app.command()
@user_errors
def recommend(
    d_model: int = typer.Option(..., "--d-model", help="Model width of the size asked about."),
    n_layers: int = typer.Option(..., "--n-layers", help="Layers."),
    n_heads: int = typer.Option(..., "--n-heads", help="Query heads."),
    head_dim: int | None = typer.Option(None, "--head-dim", help="Head dimension d_h (default d_model / n_heads)."),
    cache_budget: float | None = typer.Option(None, "--cache-budget",
                                              help="Largest KV cache allowed, as a fraction of MHA's, in (0, 1]."),
    tolerance: float = typer.Option(0.02, "--tolerance", help="Largest validation-loss gap allowed, bits per byte."),
    against: str = typer.Option("best", "--against", help="The loss to be within tolerance of: best (any variant "
                                                          "at that size) or mha."),
    sweeps: list[str] | None = typer.Option(None, "--from", help="A sweep to learn from; repeat the flag for "
                                                                 "several. Default: every sweep in the storage."),
    workspace: Path | None = WorkspaceOpt, storage: str | None = StorageOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the answer as a JSON object."),
):
    """The smallest LRKV rank for a model size whose validation loss is within the tolerance of the best
    (or of MHA) under an optional cache budget: measured directly for a swept size, fitted across the
    swept sizes for another, with its uncertainty and the runs behind it. When the evidence is too thin
    it says so and names the sweep that would settle it (exit code 3)."""
    from lrkv.dashboards.recommend import Query, points_from_study
    from lrkv.dashboards.recommend import recommend as answer
    from lrkv.orchestrator.study import open_study
    from lrkv.orchestrator.stores import redact
    try:
        query = Query(d_model, n_layers, n_heads, head_dim, cache_budget, tolerance, against)
    except ConfigError as exc:  # the query's fields are the command's flags
        raise ConfigError(f"--{exc.field.replace('_', '-')}", exc.expected, exc.got) from None
    stores = _stores(workspace, storage, None)
    names = _study_names(stores)
    for name in sweeps or []:
        if name not in names:
            known = ", ".join(names) or "none yet"
            raise ConfigError("--from", f"a sweep in {redact(stores.study_url)} ({known})", name)
    points = [p for name in (sweeps or names) for p in points_from_study(open_study(stores, name))]
    result = answer(points, query)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), default=str))
    else:
        _print_recommendation(result, query)
    if result.status == "thin":
        raise typer.Exit(REFUSED)


def _print_recommendation(result, query) -> None:
    size = f"d_model {query.d_model} · {query.n_layers} layers · {query.n_heads} heads (d_h {query.head_dim})"
    budget = f" under {query.cache_budget:g} of MHA's cache" if query.cache_budget is not None else ""
    ref = "the best variant" if query.against == "best" else "MHA"
    if result.status == "ok":
        console.print(f"[bold]r = {result.rank}[/] (r/d_h = {result.rank_frac:.3g}, KV cache "
                      f"{result.cache_fraction:.3f} of MHA's) for {size}: the smallest rank within "
                      f"{query.tolerance} bpb of {ref}{budget}")
        lo, hi = result.rank_interval
        if result.method == "direct":
            noise = "" if result.gap_se is None else f" ± {result.gap_se:.4f} (run-to-run noise, from the fit)"
            console.print(f"measured: gap {result.gap:+.4f} bpb{noise}; the sweep brackets the rank to {lo}..{hi}")
        else:
            low, high = result.gap_interval
            console.print(f"fitted across {len(result.fit['sizes'])} swept sizes: gap {result.gap:+.4f} "
                          f"± {result.gap_se:.4f} bpb (95 %: {low:+.4f}..{high:+.4f}); rank {lo}..{hi} at 95 %")
    elif result.status == "none":
        console.print(f"[bold]no rank[/] for {size}{budget}: {result.reason}")
    else:
        console.print(f"[bold]not enough evidence[/] for {size}: {result.reason}")
        if result.suggestion:
            console.print(f"to settle it ({result.suggestion['why']}), add to a sweep spec:")
            console.print(result.suggestion["yaml"], markup=False, highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]note:[/] {warning}")
    if result.supporting:
        table = Table("sweep", "size", "trial", "variant", "val bpb", "gap", "role", "MLflow run",
                      title="runs behind it", title_justify="left")
        for s in result.supporting:
            table.add_row(s["sweep"], s["size"], str(s["trial"]), s["label"], f"{s['val_bpb']:.4f}",
                          "—" if s["gap"] is None else f"{s['gap']:+.4f}", s["role"], s["run_id"] or "—")
        console.print(table)


@app.command()
@user_errors
def dashboard(workspace: Path | None = WorkspaceOpt, storage: str | None = StorageOpt,
              host: str = HostOpt,
              port: int = typer.Option(8080)):
    """Start optuna-dashboard on the sweeps' Optuna storage (needs the package's `dashboard` extra)."""
    try:
        import optuna_dashboard
    except ImportError:
        raise ConfigError("dashboard", "optuna-dashboard installed (pip install 'lrkv-sweep[dashboard]')",
                          "not installed") from None
    from lrkv.orchestrator.stores import redact
    stores = _stores(workspace, storage, None)
    if stores.local and not Path(stores.study_url).exists():  # reading creates nothing
        raise ConfigError("--workspace", "a workspace with sweeps (run one first)", str(stores.study_url))
    console.print(f"optuna-dashboard on http://{host}:{port} ← {redact(stores.study_url)}")
    optuna_dashboard.run_server(stores.optuna_storage(), host=host, port=port)


try:
    from typer._click import exceptions as click_errors  # newer typer vendors click
except ImportError:
    from click import exceptions as click_errors


def usage_error_line(exc) -> str:
    """A click usage error (missing or unknown option, a value of the wrong type) in the one-line form."""
    param = getattr(exc, "param", None)
    field = (param.opts[0] if param.opts else param.name) if param is not None else None
    if isinstance(exc, click_errors.NoSuchOption):
        return f"error: {exc.option_name}: expected one of the command's options (see --help)"
    if isinstance(exc, click_errors.MissingParameter) and field:
        env = f" (or {param.envvar})" if getattr(param, "envvar", None) else ""
        return f"error: {field}: expected a value{env}, got none"
    message = " ".join((exc.message if isinstance(exc, click_errors.BadParameter) else exc.format_message()).split())
    return f"error: {field}: {message}" if field else f"error: {message}"


def main() -> None:
    """The `lrkv` command: click's usage errors exit 2 with one line, as the commands' own errors do."""
    try:
        code = typer.main.get_command(app).main(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help())
        code = 2
    except click_errors.UsageError as exc:
        typer.echo(usage_error_line(exc), err=True)
        code = 2
    except typer.Abort:
        typer.echo("aborted", err=True)
        code = 130
    # The interpreter's exit collects garbage over every object torch, Ray and MLflow made, several times
    # over (seconds per command); the process is ending, so those collections are skipped.
    gc.freeze()
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
