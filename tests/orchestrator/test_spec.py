"""SweepSpec validation, field by field: every bad value is one ConfigError naming its dotted path.

The contract: `parse_spec` / `load_spec` raise `lrkv.kernels.ConfigError` whose `field` is where the user
wrote the bad value and whose message is one line, `<path>: expected <what>, got <value>`.
"""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lrkv.kernels import ConfigError
from lrkv.orchestrator.spec import LrSpace, SweepSpec, load_spec, parse_spec

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"
LRKV = str(Path(sys.executable).parent / "lrkv")
DELETE = object()


@pytest.fixture(scope="module")
def base() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


def edited(base: dict, path: str, value) -> dict:
    """A deep copy of `base` with the dotted `path` set to `value` (or removed: DELETE)."""
    raw = copy.deepcopy(base)
    node = raw
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


def rejected(raw, field: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_spec(raw)
    err = info.value
    message = str(err)
    assert err.field == field, message
    assert "\n" not in message, message
    assert message.startswith(f"{field}: expected "), message
    return err


SIZES = [{"name": "d64", "d_model": 64, "n_layers": 2, "n_heads": 4},     # head_dim 16
         {"name": "d128", "d_model": 128, "n_layers": 2, "n_heads": 4}]   # head_dim 32

# (dotted path to edit, value, the field the error must name)
BAD = [
    # name
    ("name", "two words", "name"),
    ("name", "", "name"),
    ("name", "-leading-dash", "name"),
    ("name", "x" * 101, "name"),
    ("name", 7, "name"),
    ("name", DELETE, "name"),
    # objectives
    ("objectives", {"kv_cache_bytes": "min"}, "objectives"),                     # no val_bpb
    ("objectives", {"val_bpb": "min"}, "objectives"),                            # no cost
    ("objectives", {"val_bpb": "min", "loss": "min"}, "objectives.loss"),        # unknown objective
    ("objectives", {"val_bpb": "min", "decode_ms": "min"}, "train.profile_contexts"),  # nothing profiled
    ("train.profile_contexts", [2048, 0], "train.profile_contexts.1"),
    ("train.profile_contexts", [1 << 30], "train.profile_contexts.0"),
    ("train.profile_batch", 0, "train.profile_batch"),
    ("objectives", {"val_bpb": "min", "params": "down"}, "objectives.params"),   # bad direction
    ("objectives", ["val_bpb", "params"], "objectives"),
    ("objectives", DELETE, "objectives"),
    ("space.key_scales", "sometimes", "space.key_scales"),
    # space.sizes
    ("space.sizes", [], "space.sizes"),
    ("space.sizes", [SIZES[0], {**SIZES[1], "name": "d64"}], "space.sizes"),     # duplicate names
    ("space.sizes.1.n_heads", 3, "space.sizes.1.n_heads"),                       # 3 ∤ 128
    ("space.sizes.0.n_heads", 0, "space.sizes.0.n_heads"),
    ("space.sizes.0.d_model", 0, "space.sizes.0.d_model"),
    ("space.sizes.0.d_model", 64.5, "space.sizes.0.d_model"),
    ("space.sizes.0.n_layers", -1, "space.sizes.0.n_layers"),
    ("space.sizes.0.n_layers", "2", "space.sizes.0.n_layers"),                   # strict: no strings
    ("space.sizes.0.head_dim", 15, "space.sizes.0.head_dim"),                    # RoPE needs even
    ("space.sizes.1.name", "has space", "space.sizes.1.name"),
    ("space.sizes.0.name", DELETE, "space.sizes.0.name"),
    ("space.sizes", "d64", "space.sizes"),
    # space.rank
    ("space.rank", {}, "space.rank"),                                            # no form
    ("space.rank", {"values": [2], "fractions": [0.5]}, "space.rank"),           # two forms
    ("space.rank", {"fractions": [0.5], "low": 0, "high": 4}, "space.rank"),
    ("space.rank", {"low": 8, "high": 4}, "space.rank"),                         # low > high
    ("space.rank", {"low": 4}, "space.rank"),                                    # high missing
    ("space.rank", {"fractions": [0.5, 1.5]}, "space.rank.fractions.1"),
    ("space.rank", {"fractions": [-0.1]}, "space.rank.fractions.0"),
    ("space.rank", {"fractions": []}, "space.rank.fractions"),
    ("space.rank", {"values": []}, "space.rank.values"),
    ("space.rank", {"values": [-1]}, "space.rank.values.0"),
    ("space.rank", {"values": [2.5]}, "space.rank.values.0"),
    ("space.rank", {"values": [4, 8, 32]}, "space.rank.values.2"),               # 32 > head_dim 16 of d64
    ("space.rank", {"low": 0, "high": 32, "step": 8}, "space.rank.high"),
    ("space.rank", {"values": [4], "step": 0}, "space.rank.step"),
    ("space.rank", {"values": [4], "bogus": 1}, "space.rank.bogus"),
    # space.lr
    ("space.lr", 0, "space.lr"),
    ("space.lr", -1e-3, "space.lr"),
    ("space.lr", "fast", "space.lr"),
    ("space.lr", True, "space.lr"),
    ("space.lr", {"low": 1e-2, "high": 1e-3}, "space.lr"),                       # low > high
    ("space.lr", {"low": 0, "high": 1e-3}, "space.lr.low"),
    ("space.lr", {"low": 1e-3}, "space.lr.high"),
    ("space.lr", {"low": 1e-3, "high": 1e-2, "bogus": 1}, "space.lr.bogus"),
    ("space.bogus", 1, "space.bogus"),
    # baselines
    ("baselines", ["gqa"], "baselines"),                                         # gqa needs its number
    ("baselines", ["mha", "bogus"], "baselines"),
    ("baselines", ["GQA2"], "baselines"),
    ("baselines", ["gqa3"], "baselines"),                                        # 3 ∤ 4 heads
    ("baselines", "mha", "baselines"),
    # anchors, seed
    ("anchors", "sometimes", "anchors"),
    ("seed", "x", "seed"),
    # budget
    ("budget.trials", 0, "budget.trials"),
    ("budget.trials", -3, "budget.trials"),
    ("budget.trials", 1.5, "budget.trials"),
    ("budget.trials", "16", "budget.trials"),
    ("budget.trials", True, "budget.trials"),
    ("budget.tokens_per_trial", 0, "budget.tokens_per_trial"),
    ("budget.tokens_per_trial", "lots", "budget.tokens_per_trial"),
    ("budget.concurrency", 0, "budget.concurrency"),
    ("budget.trials", DELETE, "budget.trials"),
    ("budget", DELETE, "budget"),
    ("budget.bogus", 1, "budget.bogus"),
    # constraints
    ("constraints.max_cache_fraction_of_mha", 0, "constraints.max_cache_fraction_of_mha"),
    ("constraints.max_cache_fraction_of_mha", "half", "constraints.max_cache_fraction_of_mha"),
    ("constraints.max_cache_bytes_per_token", -5, "constraints.max_cache_bytes_per_token"),
    ("constraints.max_cache_bytes_per_token", 10.5, "constraints.max_cache_bytes_per_token"),
    ("constraints.max_params", 0, "constraints.max_params"),
    ("constraints.bogus", 1, "constraints.bogus"),
    # pruning
    ("pruning.margin", -0.1, "pruning.margin"),
    ("pruning.grace", 1.5, "pruning.grace"),
    ("pruning.grace", -0.1, "pruning.grace"),
    ("pruning.enabled", "maybe", "pruning.enabled"),
    ("pruning.bogus", 1, "pruning.bogus"),
    # sampler
    ("sampler.kind", "cmaes", "sampler.kind"),
    ("sampler.startup_trials", 0, "sampler.startup_trials"),
    ("sampler.seed", "x", "sampler.seed"),
    ("sampler.bogus", 1, "sampler.bogus"),
    # resources
    ("resources.gpus_per_trial", -1, "resources.gpus_per_trial"),
    ("resources.cpus_per_trial", 0, "resources.cpus_per_trial"),
    ("resources.cpus_per_trial", -2, "resources.cpus_per_trial"),
    ("resources.max_retries", -1, "resources.max_retries"),
    ("resources.bogus", 1, "resources.bogus"),
    ("resources.mps", "sometimes", "resources.mps"),
    ("resources.mps", True, "resources.mps"),                                    # the base takes no GPU
    # storage
    ("storage.study", 5, "storage.study"),
    ("storage.bogus", 1, "storage.bogus"),
    # data (validated by the worker's DataConfig, reported at the spec's path)
    ("data.seq_len", 0, "data.seq_len"),
    ("data.seq_len", -64, "data.seq_len"),
    ("data.tokenizer", "wordpiece", "data.tokenizer"),
    ("data.val_fraction", 1.5, "data.val_fraction"),
    ("data.source", "", "data.source"),
    ("data.bogus", 1, "data.bogus"),
    ("data", [1, 2], "data"),
    # train
    ("train.tokens", 1000, "train.tokens"),                                      # the budget sets it
    ("train.lr", -1e-3, "train.lr"),
    ("train.lr", 0, "train.lr"),
    ("train.batch_size", 0, "train.batch_size"),
    ("train.optimizer", "sgd", "train.optimizer"),
    ("train.warmup_frac", 2, "train.warmup_frac"),
    ("train.bogus", 1, "train.bogus"),
    ("train", "fast", "train"),
    # unknown top-level field
    ("bogus", 1, "bogus"),
]


@pytest.mark.parametrize("path,value,field", BAD, ids=[f"{p}={v!r}"[:60] for p, v, _ in BAD])
def test_bad_field_is_one_line_error_at_its_path(base, path, value, field):
    rejected(edited(base, path, value), field)


@pytest.mark.parametrize("path", ["bogus", "space.bogus", "space.sizes.0.bogus", "space.rank.bogus", "budget.bogus",
                                  "constraints.bogus", "pruning.bogus", "sampler.bogus", "resources.bogus",
                                  "storage.bogus", "data.bogus", "train.bogus"])
def test_unknown_field_anywhere_says_no_such_field(base, path):
    err = rejected(edited(base, path, 1), path)
    assert str(err) == f"{path}: expected no such field, got 1"


def test_messages_name_the_offending_value(base):
    assert str(rejected(edited(base, "baselines", ["gqa"]), "baselines")).endswith("got 'gqa'")
    assert str(rejected(edited(base, "baselines", ["gqa3"]), "baselines")).endswith("got 3")
    assert str(rejected(edited(base, "space.sizes.1.n_heads", 3), "space.sizes.1.n_heads")) == \
        "space.sizes.1.n_heads: expected a divisor of d_model (128), got 3"
    values = rejected(edited(base, "space.rank", {"values": [4, 8, 32]}), "space.rank.values.2")
    assert "(16)" in values.expected and values.got == 32
    high = rejected(edited(base, "space.rank", {"low": 0, "high": 32, "step": 8}), "space.rank.high")
    assert high.got == 32  # the value the user wrote, not the first step past head_dim
    assert "d64 repeated" in rejected(edited(base, "space.sizes", [SIZES[0], SIZES[0]]), "space.sizes").expected
    assert rejected(edited(base, "train.tokens", 1000), "train.tokens").got == 1000
    assert "decode_ms" in rejected(edited(base, "objectives", {"val_bpb": "min", "decode_ms": "min"}),
                                   "train.profile_contexts").expected
    profiled = edited(edited(base, "objectives", {"val_bpb": "min", "decode_ms": "min"}),
                      "train.profile_contexts", [64, 128])
    assert parse_spec(profiled).objectives == {"val_bpb": "min", "decode_ms": "min"}
    for err in (rejected(edited(base, "baselines", ["gqa"]), "baselines"),
                rejected(edited(base, "space.sizes", [SIZES[0], SIZES[0]]), "space.sizes")):
        assert str(err).count(", got ") == 1, str(err)


def test_top_level_must_be_a_mapping():
    for raw in ([1, 2], "text", None, 3):
        with pytest.raises(ConfigError) as info:
            parse_spec(raw, source="my.yaml")
        assert info.value.field == "my.yaml" and str(info.value).startswith("my.yaml: expected a YAML mapping")


# -- what is accepted ----------------------------------------------------------------------------


def test_quickstart_loads_with_its_values():
    spec = load_spec(QUICKSTART)
    assert isinstance(spec, SweepSpec) and spec.name == "quickstart"
    assert list(spec.objectives) == ["val_bpb", "kv_cache_bytes"] and spec.directions == ["minimize", "minimize"]
    assert [s.name for s in spec.space.sizes] == ["d64", "d128"] and [s.d_head for s in spec.space.sizes] == [16, 32]
    assert spec.variants() == ["lrkv", "mha", "gqa2", "mqa"]
    assert spec.space.rank.param() == "rank_frac" and spec.space.rank.choices() == [0.0, 0.125, 0.25, 0.5, 1.0]
    assert spec.budget.trials == 16 and spec.pruning.grace == 0.5
    assert spec.data_config().seq_len == 64


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_loads(path):
    spec = load_spec(path)
    for size in spec.space.sizes:  # and every size × variant builds a trial
        for variant in spec.variants():
            spec.trial_config(size.name, variant, spec.space.rank.choices()[-1], None)


@pytest.mark.parametrize("path,value", [
    ("space.rank", {"values": [0, 4, 16]}),
    ("space.rank", {"low": 0, "high": 16, "step": 4}),
    ("space.rank", {"low": 8, "high": 8}),
    ("space.lr", 0.003),
    ("space.lr", 1),
    ("space.lr", {"low": 1e-3, "high": 1e-2}),
    ("space.lr", {"low": 1e-3, "high": 1e-3, "log": False}),
    ("space.sizes.0.head_dim", 8),
    ("baselines", ["mha", "mqa", "mla", "gqa1", "gqa4"]),
    ("baselines", []),
    ("objectives", {"val_bpb": "min", "kv_cache_bytes": "min", "flops_per_token": "min", "params": "max"}),
    ("constraints", {"max_cache_fraction_of_mha": 0.5, "max_cache_bytes_per_token": 1024, "max_params": 10**6}),
    ("pruning", {"enabled": False, "margin": 0, "grace": 1}),
    ("sampler", {"kind": "grid"}),
    ("resources", {"gpus_per_trial": 0.5, "cpus_per_trial": 2, "max_retries": 0}),
    ("storage", {"study": "postgresql://u:p@host/db", "tracking_uri": "http://mlflow:5000"}),
    ("data", {}),
    ("train", {}),
])
def test_valid_variations_are_accepted(base, path, value):
    parse_spec(edited(base, path, value))


def test_lr_forms(base):
    assert parse_spec(edited(base, "space.lr", 1)).space.lr == 1.0
    assert isinstance(parse_spec(edited(base, "space.lr", 1)).space.lr, float)
    ranged = parse_spec(edited(base, "space.lr", {"low": 1e-3, "high": 1e-2})).space.lr
    assert isinstance(ranged, LrSpace) and ranged.log is True
    assert parse_spec(edited(base, "space.lr", None)).space.lr is None


def test_baselines_are_deduplicated_in_order(base):
    spec = parse_spec(edited(base, "baselines", ["mqa", "mha", "mqa", "gqa2"]))
    assert spec.baselines == ["mqa", "mha", "gqa2"] and spec.variants() == ["lrkv", "mqa", "mha", "gqa2"]


def test_rank_choices_per_form(base):
    rank = lambda r: parse_spec(edited(base, "space.rank", r)).space.rank  # noqa: E731
    assert rank({"values": [8, 0, 8, 4]}).choices() == [0, 4, 8]
    assert rank({"low": 2, "high": 11, "step": 3}).choices() == [2, 5, 8, 11]
    assert rank({"fractions": [0.5, 0.25, 0.5]}).choices() == [0.25, 0.5]
    fractions = rank({"fractions": [0.25]})
    assert fractions.rank(0.25, 32) == 8 and fractions.rank(1.0, 16) == 16
    assert rank({"values": [4]}).rank(4, 32) == 4


def test_fraction_ranks_scale_with_the_size(base):
    spec = load_spec(QUICKSTART)
    small = spec.trial_config("d64", "lrkv", 0.5, None).model.attention
    large = spec.trial_config("d128", "lrkv", 0.5, None).model.attention
    assert (small.rank, large.rank) == (8, 16)
    assert spec.trial_config("d64", "gqa2", 0.5, None).model.attention.n_kv_heads == 2
    assert spec.trial_config("d64", "mha", 0.5, None).model.attention.rank == 0


def test_key_scales_reach_lrkv_trials_with_a_residual():
    """space.key_scales gives LRKV trials at r > 0 the key-scale cache (priced in their cache bytes); r = 0
    and the baselines have no per-head key norm to cache and keep their own cache."""
    spec = load_spec(QUICKSTART)
    scaled = spec.model_copy(update={"space": spec.space.model_copy(update={"key_scales": True})})
    lrkv = scaled.trial_config("d128", "lrkv", 0.5, None).model.attention
    plain = spec.trial_config("d128", "lrkv", 0.5, None).model.attention
    assert lrkv.key_scales and not plain.key_scales
    assert lrkv.kv_cache_bytes_per_token() == plain.kv_cache_bytes_per_token() + lrkv.n_heads * 2
    assert not scaled.trial_config("d128", "lrkv", 0.0, None).model.attention.key_scales
    assert not scaled.trial_config("d128", "mqa", 0.5, None).model.attention.key_scales


def test_trial_config_takes_budget_tokens_and_lr_override():
    spec = load_spec(QUICKSTART)
    trial = spec.trial_config("d128", "lrkv", 0.25, None)
    assert trial.train.tokens == spec.budget.tokens_per_trial and trial.train.lr == 0.01
    assert spec.trial_config("d128", "lrkv", 0.25, 0.002).train.lr == 0.002


# -- load_spec: the file itself ------------------------------------------------------------------


@pytest.mark.parametrize("name,body,expected", [
    ("list.yaml", b"- 1\n- 2\n", "a YAML mapping"),
    ("scalar.yaml", b"just text\n", "a YAML mapping"),
    ("empty.yaml", b"", "a YAML mapping"),
    ("binary.yaml", b"\xff\xfe\x00bad", "UTF-8 text"),
    ("syntax.yaml", b"name: [unclosed\n  x: 1\n", "valid YAML"),
    ("tab.yaml", b"a: 1\n\tb: 2\n", "valid YAML"),
])
def test_load_spec_bad_file_names_the_file(tmp_path, name, body, expected):
    path = tmp_path / name
    path.write_bytes(body)
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    message = str(info.value)
    assert info.value.field == str(path) and "\n" not in message
    assert message.startswith(f"{path}: expected {expected}"), message


def test_load_spec_missing_file_and_folder(tmp_path):
    for path in (tmp_path / "missing.yaml", tmp_path):
        with pytest.raises(ConfigError) as info:
            load_spec(path)
        assert info.value.field == str(path) and "\n" not in str(info.value)
        assert str(info.value).startswith(f"{path}: expected an existing sweep spec")


def test_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: ok\nobjectives: {val_bpb: min\nspace: 1\n")
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert "line " in str(info.value.got)


def test_load_spec_reports_field_errors_by_path(tmp_path, base):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(edited(base, "space.sizes.1.n_heads", 3)))
    with pytest.raises(ConfigError) as info:
        load_spec(str(path))
    assert info.value.field == "space.sizes.1.n_heads"


# -- digest --------------------------------------------------------------------------------------


def test_digest_is_stable(base, tmp_path):
    first = load_spec(QUICKSTART).digest()
    assert first == load_spec(QUICKSTART).digest() == parse_spec(copy.deepcopy(base)).digest()
    assert len(first) == 12 and int(first, 16) >= 0
    # key order in the YAML does not matter
    path = tmp_path / "reordered.yaml"
    path.write_text(yaml.safe_dump(dict(reversed(list(base.items()))), sort_keys=False))
    assert load_spec(path).digest() == first
    # a spelled-out default is the same spec
    assert parse_spec(edited(base, "anchors", True)).digest() == first
    assert parse_spec(edited(base, "resources.mps", False)).digest() == first


@pytest.mark.parametrize("path,value", [
    ("budget.trials", 17), ("budget.tokens_per_trial", 2 * 393216), ("space.rank", {"fractions": [0.0, 0.5]}),
    ("baselines", ["mha"]), ("objectives", {"val_bpb": "min", "params": "min"}), ("sampler.seed", 1),
    ("pruning.margin", 0.1), ("data.seq_len", 128), ("train.lr", 0.02), ("space.lr", {"low": 1e-3, "high": 1e-2}),
    ("seed", 1), ("name", "other"), ("space.key_scales", True),
    ("resources", {"gpus_per_trial": 0.25, "mps": True}),
])
def test_digest_changes_with_the_search(base, path, value):
    assert parse_spec(edited(base, path, value)).digest() != parse_spec(base).digest()


def test_mps_needs_gpu_trials(base):
    err = rejected(edited(base, "resources.mps", True), "resources.mps")
    assert str(err) == "resources.mps: expected false when trials take no GPU (gpus_per_trial: 0), got True"
    assert parse_spec(edited(base, "resources", {"gpus_per_trial": 0.5, "mps": True})).resources.mps


def test_digest_ignores_storage(base):
    plain = parse_spec(base).digest()
    assert parse_spec(edited(base, "storage", {"study": "postgresql://u:secret@db/optuna",
                                               "tracking_uri": "http://mlflow:5000"})).digest() == plain
    assert parse_spec(edited(base, "storage.study", "/elsewhere/optuna.journal")).digest() == plain


# -- the command: bad specs fail before any store is touched -------------------------------------


def test_sweep_run_bad_spec_exit_2_and_writes_nothing(tmp_path, base):
    """`lrkv sweep run` on bad specs: exit 2, one `error:` line, no workspace, nothing else written.

    The four commands run side by side (each pays ~3 s of imports)."""
    cases = {"bad_field": (yaml.safe_dump(edited(base, "space.sizes.1.n_heads", 3)), "space.sizes.1.n_heads"),
             "extra_field": (yaml.safe_dump(edited(base, "space.rank.bogus", 1)), "space.rank.bogus"),
             "list": ("- name: quickstart\n", None),
             "missing": (None, None)}
    running = {}
    for case, (body, field) in cases.items():
        folder = tmp_path / case
        folder.mkdir()
        spec = folder / "bad.yaml"
        if body is not None:
            spec.write_text(body)
        running[case] = subprocess.Popen([LRKV, "sweep", "run", str(spec), "--workspace", str(folder / "ws")],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder)
    for case, proc in running.items():
        stdout, stderr = proc.communicate(timeout=120)
        folder, field = tmp_path / case, cases[case][1]
        assert proc.returncode == 2, (case, stdout, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, stderr)
        assert lines[0].startswith(f"error: {field or folder / 'bad.yaml'}: expected "), (case, stderr)
        assert not (folder / "ws").exists(), case
        assert sorted(p.name for p in folder.iterdir()) == (["bad.yaml"] if case != "missing" else []), case


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_load(path):
    """Every spec in sweeps/ is valid as shipped, and grids enumerate exactly their trial budget."""
    from lrkv.orchestrator import search
    spec = load_spec(path)
    points = search.finite_points(spec)
    if spec.sampler.kind == "grid":
        assert len(points) == spec.budget.trials
