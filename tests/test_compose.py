"""The cluster topology files: docker-compose.yml, Dockerfile, .env.example and the README's cluster section.

Docker's engine cannot run here, so this checks what can be checked without it:
- the file parses, and `docker compose config` (or the standalone `docker-compose config`) accepts it with an
  env file made from .env.example, and refuses it while the example's secrets are still empty; the compose-spec
  JSON schema that Debian's docker-compose ships validates it too (`make test` installs it: tests/system.sh);
- every port is published on 127.0.0.1 only; every service the README's section names exists;
- every `command` of the compose file and the Dockerfile's CMD is a command this project really has (`ray`,
  `mlflow`, `lrkv`, `optuna-dashboard`; `postgres` runs its image's own), with subcommands and flags that exist;
- .env.example defines every variable the compose file uses, and no secret is written in the compose file.
Running the same topology without Docker (processes, not containers) is the cluster tests' job.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
BIN = Path(sys.executable).parent
SERVICES = {"postgres", "mlflow", "ray-head", "ray-worker", "optuna-dashboard"}
PROJECT_COMMANDS = {"ray", "mlflow", "lrkv", "optuna-dashboard"}
SECRETS = {"POSTGRES_PASSWORD", "RAY_AUTH_TOKEN"}
VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}|(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")
PURE_VAR = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?])[^}]*)?\}")
# Keys of a compose-spec service this file may use (a typo such as `comand` or `enviroment` is not one).
SERVICE_KEYS = {"image", "build", "command", "entrypoint", "environment", "env_file", "ports", "volumes",
                "depends_on", "healthcheck", "restart", "init", "shm_size", "deploy", "profiles", "user",
                "working_dir", "labels", "networks", "expose", "stop_grace_period", "ulimits", "logging"}


# -- reading the files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "docker-compose.yml: no services mapping"
    return doc


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def filled_env(example_env) -> dict[str, str]:
    """.env.example with its empty secrets filled in, as a user's .env would be."""
    return {k: (v or f"test-{k.lower().replace('_', '-')}-0123456789abcdef") for k, v in example_env.items()}


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}:{n}: not KEY=VALUE: {line!r}"
        env[key] = value
    return env


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$."""
    def one(m: re.Match) -> str:
        name, rest = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), "")
        value = env.get(name)
        if rest.startswith((":-", ":?")):
            if not value:
                assert rest[1] == "-", f"${{{name}}} required: {rest[2:]}"
                return rest[2:]
        elif rest.startswith(("-", "?")):
            if value is None:
                assert rest[0] == "-", f"${{{name}}} required: {rest[1:]}"
                return rest[1:]
        return value or ""
    return VAR.sub(one, text).replace("$$", "$")


def strings(node, path="") -> list[tuple[str, str]]:
    """Every string in a YAML tree, with its dotted path."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings(v, f"{path}.{k}".lstrip("."))]
    if isinstance(node, list):
        return [s for i, v in enumerate(node) for s in strings(v, f"{path}.{i}")]
    return [(path, node)] if isinstance(node, str) else []


def argv(service: dict, key: str = "command") -> list[str] | None:
    value = service.get(key)
    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.find("\n## Running on a cluster\n")
    assert start >= 0, "README.md has no '## Running on a cluster' section"
    end = text.find("\n## ", start + 1)
    return text[start: end if end >= 0 else len(text)]


def readme_commands(section: str) -> list[list[str]]:
    """Shell commands of the section: its code blocks' lines (continuations joined) and inline `code` spans."""
    lines = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", section, flags=re.S):
        lines += block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"```.*?```", "", section, flags=re.S)
    lines += re.findall(r"`([^`\n]+)`", prose)
    commands = []
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:  # a prose span that is not shell
            continue
        words = []
        for token in [*tokens, ";"]:
            if token in (";", "&&", "||", "|", "&"):
                if words:
                    commands.append(words)
                words = []
            else:
                words.append(token)
    return commands


# -- the commands the images run -----------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def image_commands(compose) -> dict[str, list[str]]:
    """Where each command comes from -> its argv: every service's command/entrypoint, the Dockerfile's CMD/ENTRYPOINT."""
    found = {}
    for name, service in compose["services"].items():
        for key in ("entrypoint", "command"):
            if (words := argv(service, key)) is not None:
                found[f"services.{name}.{key}"] = words
    for word, rest in dockerfile_instructions():
        if word in ("CMD", "ENTRYPOINT"):
            assert rest.startswith("["), f"Dockerfile {word} should be in exec form (a JSON list): {rest}"
            found[f"Dockerfile {word}"] = json.loads(rest)
    return found


@pytest.fixture(scope="module")
def helps(compose) -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """`<cmd> <subcommand…> --help` of the commands the images run, and of the `ray` commands the README uses,
    side by side through the venv's entry points (each pays its imports). The README's `lrkv` commands are
    resolved in-process, on the command tree the `lrkv` entry point runs."""
    wanted = set()
    for words in image_commands(compose).values():
        if words[0] in ("ray", "mlflow"):
            wanted.add(click_path(words))
        elif words[0] == "lrkv":
            wanted.add(("lrkv", *lrkv_path(words[1:])[0]))
    for words in readme_commands(readme_section()):
        if words[0] == "ray":
            wanted.add(click_path(words))
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}

    def run(key):
        return key, subprocess.run([str(BIN / key[0]), *key[1:], "--help"], capture_output=True, text=True,
                                   env=env, timeout=300, cwd=ROOT)
    with ThreadPoolExecutor(len(wanted)) as pool:
        return dict(pool.map(run, sorted(wanted)))


def lrkv_path(words: list[str]) -> tuple[list[str], object]:
    """Split `lrkv` arguments into the subcommand path and the click command it names (None: no such command)."""
    import typer.main

    from lrkv.orchestrator.cli import app
    command = typer.main.get_command(app)  # typer's own (vendored) click: duck-typed, a group has get_command
    path = []
    for word in words:
        if not hasattr(command, "get_command") or word.startswith("-"):
            break
        command = command.get_command(command.context_class(command), word)
        path.append(word)
        if command is None:
            break
    return path, command


def click_path(words: list[str]) -> tuple[str, ...]:
    """`ray start …` -> (ray, start); `ray job logs ID …` -> (ray, job, logs); `mlflow server …` -> (mlflow, server)."""
    return tuple(words[:3] if len(words) > 2 and words[1] == "job" else words[:2])


def flags_in(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("--")]


def check_project_command(words: list[str], helps, where: str, dockerfile: str) -> None:
    head = words[0]
    assert head in PROJECT_COMMANDS, f"{where}: {head!r} is not one of the project's commands {sorted(PROJECT_COMMANDS)}"
    if head == "optuna-dashboard":  # installed in the image only
        assert re.search(r"pip install[^\n]*\boptuna-dashboard\b", dockerfile), \
            f"{where}: runs optuna-dashboard, which the Dockerfile does not install"
        exe = shutil.which("optuna-dashboard") or (BIN / "optuna-dashboard")
        if Path(exe).exists():
            text = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120).stdout
            for flag in flags_in(words):
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{where}: optuna-dashboard has no {flag}"
        return
    assert (BIN / head).exists(), f"{where}: {head} is not installed with the project ({BIN / head})"
    if head == "lrkv":
        path, command = lrkv_path(words[1:])
        assert command is not None, f"{where}: `lrkv {' '.join(path)}` is not a command"
        if ("lrkv", *path) in helps:
            done = helps[("lrkv", *path)]
            assert done.returncode == 0, f"{where}: `lrkv {' '.join(path)} --help` failed: {done.stderr[-500:]}"
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        for flag in flags_in(words):
            assert flag in options, f"{where}: `lrkv {' '.join(path)}` has no option {flag}"
        return
    key = click_path(words)
    done = helps[key]
    assert done.returncode == 0, f"{where}: `{' '.join(key)} --help` failed: {done.stderr[-500:]}"
    for flag in flags_in(words):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", done.stdout), \
            f"{where}: `{' '.join(key)}` has no option {flag}"


# -- the file parses, and compose accepts it -------------------------------------------------------


def test_compose_file_has_the_topology(compose):
    assert set(compose["services"]) == SERVICES
    allowed_top = {"services", "volumes", "networks", "configs", "secrets", "name", "version"}
    assert {k for k in compose if not k.startswith("x-")} <= allowed_top
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        assert set(service) <= SERVICE_KEYS, f"{name}: unknown keys {set(service) - SERVICE_KEYS}"
        assert "image" in service, f"{name}: no image"
        for dep in service.get("depends_on") or {}:
            assert dep in compose["services"], f"{name} depends on {dep}, which is not a service"
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: mounts {source}, which is not in the repo"
            else:
                assert source in declared, f"{name}: named volume {source} is not declared"


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def run_compose_config(cli, env_file: Path, tmp_path) -> subprocess.CompletedProcess:
    """`compose config` in a clean environment (no stray POSTGRES_PASSWORD of the caller's shell counts)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path)}
    return subprocess.run([*cli, "--project-directory", str(ROOT), "-f", str(COMPOSE), "--env-file", str(env_file),
                           "config"], capture_output=True, text=True, env=env, timeout=120)


def test_docker_compose_config_accepts_it(tmp_path, filled_env, example_env):
    cli = compose_cli()
    if cli is None:
        pytest.fail("needs a compose CLI (docker compose plugin or docker-compose; tests/system.sh installs it)")
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in filled_env.items()))
    done = run_compose_config(cli, env_file, tmp_path)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert set(resolved["services"]) == SERVICES
    for name, service in resolved["services"].items():
        for port in service.get("ports") or []:
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name}: port {port} is published beyond 127.0.0.1"
    assert filled_env["POSTGRES_PASSWORD"] in done.stdout  # the secrets come through from the env file
    assert filled_env["RAY_AUTH_TOKEN"] in done.stdout

    # The example as it ships (empty secrets) is refused, naming what is missing.
    refused = run_compose_config(cli, ENV_EXAMPLE, tmp_path)
    assert refused.returncode != 0, "compose accepted .env.example with empty secrets"
    assert any(s in refused.stderr for s in SECRETS), refused.stderr


def vendored_compose_schema() -> Path | None:
    import site
    dirs = [*sys.path, *site.getsitepackages(), "/usr/lib/python3/dist-packages", "/usr/local/lib/python3/dist-packages"]
    for d in dirs:
        candidate = Path(d) / "compose" / "config" / "compose_spec.json"
        if candidate.is_file():
            return candidate
    return None


def test_compose_spec_schema_accepts_it(compose):
    path = vendored_compose_schema()
    if path is None:
        pytest.fail("needs the compose-spec JSON schema that Debian's docker-compose ships (tests/system.sh)")
    import jsonschema
    schema = json.loads(path.read_text())
    cls = jsonschema.Draft201909Validator if "2019-09" in schema.get("$schema", "") else \
        jsonschema.validators.validator_for(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in cls(schema).iter_errors(compose)]
    assert not errors, errors


# -- exposure and secrets ------------------------------------------------------------------------


def test_every_port_is_published_on_localhost_only(compose):
    published = 0
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", f"{name}: host networking bypasses the port bindings"
        for port in service.get("ports") or []:
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+(/tcp|/udp)?", str(port)), \
                    f"{name}: port {port!r} is not 127.0.0.1:HOST:CONTAINER"
    assert published >= 4  # postgres, mlflow, the Ray dashboard / job API, optuna-dashboard


def test_env_example_defines_every_variable_and_no_secret(compose, example_env):
    text = COMPOSE.read_text()
    used = {m.group(1) or m.group(3) for m in VAR.finditer(text)}
    assert used, "the compose file uses no variables"
    assert used <= set(example_env), f".env.example lacks {sorted(used - set(example_env))}"
    assert set(example_env) <= used, f".env.example has variables the compose file never uses: {sorted(set(example_env) - used)}"
    for secret in SECRETS:
        assert example_env.get(secret) == "", f".env.example ships a value for {secret}"
        assert re.search(rf"\$\{{{secret}:\?[^}}]+\}}", text), f"compose does not require {secret} (${{{secret}:?…}})"


def secret_literals(doc) -> list[str]:
    """Passwords or tokens written as literals: in a URL's user info or as an env value named like a secret."""
    found = []
    for path, value in strings(doc):
        for m in re.finditer(r"://[^:/@\s]+:([^@\s]+)@", value):
            if not PURE_VAR.fullmatch(m.group(1)):
                found.append(f"{path}: {value}")
    for name, service in (doc.get("services") or {}).items():
        for key, value in environment(service).items():
            if re.search(r"PASSWORD|TOKEN|SECRET|_KEY$", key) and not PURE_VAR.fullmatch(value):
                found.append(f"services.{name}.environment.{key}")
    return found


def test_no_secret_literal_in_the_compose_file(compose, example_env):
    assert secret_literals(compose) == []
    # the check itself catches what it is for
    assert secret_literals({"services": {"a": {"command": ["x", "postgresql://u:hunter2@db/x"],
                                               "environment": {"POSTGRES_PASSWORD": "hunter2"}}}}) != []
    for service in compose["services"].values():
        for env_file in service.get("env_file") or []:
            assert Path(env_file if isinstance(env_file, str) else env_file["path"]).name == ".env"


def test_env_file_stays_out_of_git_and_the_image():
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
        assert ignored.returncode == 0, ".env is not git-ignored"
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", ".env"], cwd=ROOT, capture_output=True)
        assert tracked.returncode != 0, ".env is committed"
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
    for word, rest in dockerfile_instructions():
        if word in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|TOKEN|SECRET", rest), f"Dockerfile {word} {rest}"


# -- what runs in the containers -------------------------------------------------------------------


def test_every_command_is_one_the_project_has(compose, helps):
    dockerfile = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    commands = image_commands(compose)
    for name, service in compose["services"].items():
        if f"services.{name}.command" not in commands and f"services.{name}.entrypoint" not in commands:
            assert str(service["image"]).split(":")[0] in ("postgres", "docker.io/library/postgres"), \
                f"{name} runs its image's default command, and only postgres may"
    assert "Dockerfile CMD" in commands
    for where, words in commands.items():
        check_project_command(words, helps, where, dockerfile)


def test_dockerfile_builds_the_project_on_cuda_torch():
    instructions = dockerfile_instructions()
    args = dict(rest.partition("=")[::2] for word, rest in instructions if word == "ARG")
    base = next(rest for word, rest in instructions if word == "FROM")
    base = interpolate(base, args)
    assert "cuda" in base.lower() and ("pytorch" in base.lower()), f"base image {base} is not a CUDA PyTorch image"
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert re.search(r"pip install \.(\s|\[)", runs), "the Dockerfile does not pip install the project"
    # the driver a plain postgresql:// URL loads under the SQLAlchemy this project resolves to
    from sqlalchemy.engine import make_url
    driver = make_url("postgresql://u@h/db").get_dialect().driver
    packages = {"psycopg": r"psycopg(\[binary\]|-binary)?", "psycopg2": r"psycopg2(-binary)?"}[driver]
    assert re.search(rf"(?<![\w-])\"?{packages}\"?(?![\w-])", runs), f"the image lacks {driver}, postgresql://'s driver"
    copied = " ".join(rest for word, rest in instructions if word in ("COPY", "ADD"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", pyproject["project"]["readme"],
              *pyproject["tool"]["setuptools"]["package-dir"].values()]
    for path in needed:
        assert re.search(rf"(?<![\w/.-]){re.escape(path)}/?(?=\s)", copied + " "), f"the Dockerfile does not copy {path}"


def test_services_share_the_one_image(compose, filled_env):
    dockerfile_args = {rest.partition("=")[0] for word, rest in dockerfile_instructions() if word == "ARG"}
    built = {}
    for name, service in compose["services"].items():
        if "build" in service:
            build = service["build"]
            context = build if isinstance(build, str) else build.get("context", ".")
            assert (ROOT / context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")) \
                .resolve() == DOCKERFILE.resolve()
            if isinstance(build, dict):
                assert set(build.get("args") or {}) <= dockerfile_args, f"{name}: build args the Dockerfile lacks"
            built[name] = interpolate(service["image"], filled_env)
    assert set(built) == SERVICES - {"postgres"} and len(set(built.values())) == 1, built


def test_postgres_init_creates_both_databases_the_services_use(compose, filled_env):
    postgres = compose["services"]["postgres"]
    mounts = [v for v in postgres["volumes"] if isinstance(v, str) and "/docker-entrypoint-initdb.d/" in v]
    assert len(mounts) == 1
    script = (ROOT / mounts[0].split(":")[0]).read_text()
    created = set(re.findall(r"CREATE DATABASE\s+(\w+)", script, flags=re.I))
    assert created == {"optuna", "mlflow"}
    assert "pg_isready" in str(postgres["healthcheck"]["test"])

    def database(url: str) -> str:
        parts = urlsplit(interpolate(url, filled_env))
        assert parts.scheme.startswith("postgresql") and parts.hostname == "postgres" and parts.port == 5432, url
        assert parts.username == filled_env["POSTGRES_USER"] and parts.password == filled_env["POSTGRES_PASSWORD"]
        return parts.path.lstrip("/")
    mlflow = argv(compose["services"]["mlflow"])
    assert database(mlflow[mlflow.index("--backend-store-uri") + 1]) == "mlflow"
    assert database(environment(compose["services"]["ray-head"])["LRKV_STORAGE"]) == "optuna"
    assert database(argv(compose["services"]["optuna-dashboard"])[1]) == "optuna"


def test_ray_head_workers_and_mlflow_fit_together(compose, filled_env):
    services = compose["services"]
    head, worker, mlflow = argv(services["ray-head"]), argv(services["ray-worker"]), argv(services["mlflow"])
    assert head[:2] == ["ray", "start"] and "--head" in head and "--block" in head
    assert head[head.index("--num-gpus") + 1] == "0" and head[head.index("--dashboard-host") + 1] == "0.0.0.0"
    gcs_port = head[head.index("--port") + 1]
    assert worker[:2] == ["ray", "start"] and "--block" in worker
    assert worker[worker.index("--address") + 1] == f"ray-head:{gcs_port}"
    dashboard = head[head.index("--dashboard-port") + 1] if "--dashboard-port" in head else "8265"
    assert f"127.0.0.1:{dashboard}:{dashboard}" in services["ray-head"]["ports"]
    # GPUs: an NVIDIA reservation on the workers, none on the head
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert [d["driver"] for d in devices] == ["nvidia"] and "gpu" in devices[0]["capabilities"]
    assert devices[0].get("count") == "all" or isinstance(devices[0].get("count"), int)
    assert "deploy" not in services["ray-head"]
    # token authentication on every Ray node, from the env file
    for name in ("ray-head", "ray-worker"):
        env = environment(services[name])
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), name
    # workers hold no store credentials; the head (where the driver runs) has both stores
    worker_env = environment(services["ray-worker"])
    assert not services["ray-worker"].get("env_file")
    assert not any("POSTGRES" in v or k.startswith("LRKV_") for k, v in worker_env.items()), worker_env
    head_env = {k: interpolate(v, filled_env) for k, v in environment(services["ray-head"]).items()}
    tracking = urlsplit(head_env["LRKV_TRACKING_URI"])
    assert tracking.hostname == "mlflow" and str(tracking.port) == mlflow[mlflow.index("--port") + 1]
    # the MLflow server answers the Host header the containers send (it refuses unknown hosts: DNS rebinding)
    mlflow_env = {k: interpolate(v, filled_env) for k, v in environment(services["mlflow"]).items()}
    allowed = mlflow_env.get("MLFLOW_SERVER_ALLOWED_HOSTS") or \
        (mlflow[mlflow.index("--allowed-hosts") + 1] if "--allowed-hosts" in mlflow else "")
    hosts = [h.strip() for h in allowed.split(",") if h.strip()]
    for host in (tracking.netloc, "127.0.0.1:5000", "localhost:5000"):
        # as mlflow.server.security_utils.is_allowed_host_header matches (importing it loads the whole server)
        assert "*" in hosts or any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in hosts), \
            f"MLflow would refuse Host: {host} (allowed: {allowed})"
    assert mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "--serve-artifacts" in mlflow and mlflow[mlflow.index("--artifacts-destination") + 1] == "/mlartifacts"
    assert mlflow[mlflow.index("--host") + 1] == "0.0.0.0" and mlflow[mlflow.index("--workers") + 1] == "1"
    # start order: stores healthy before the head, the head healthy before the workers
    assert services["ray-head"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"


# -- the README's section ------------------------------------------------------------------------


def test_readme_names_only_services_that_exist(compose):
    section = readme_section()
    services = set(compose["services"])
    table = set(re.findall(r"^\|\s*`([a-z][a-z0-9-]*)`\s*\|", section, flags=re.M))
    assert table == services, f"README's service table {sorted(table)} ≠ compose {sorted(services)}"
    named = set()
    for words in readme_commands(section):
        if words[:2] != ["docker", "compose"] or len(words) < 3:
            continue
        sub, rest = words[2], words[3:]
        assert sub in {"up", "down", "ps", "exec", "logs", "build", "config", "run", "stop", "restart", "pull"}, words
        for i, word in enumerate(rest):
            if word == "--scale":
                named.add(rest[i + 1].split("=")[0])
        args = [w for i, w in enumerate(rest) if not w.startswith("-") and (i == 0 or rest[i - 1] != "--scale")]
        if sub in ("exec", "run"):
            named.add(args[0])
        elif sub in ("up", "logs", "stop", "restart", "ps", "build", "pull"):
            named.update(args)
    for host in re.findall(r"(?:@|://)([a-z][a-z0-9-]*):\d+", section):
        if host not in ("localhost",):
            named.add(host)
    assert named, "the section names no service in its commands"
    assert named <= services, f"README names {sorted(named - services)}, which compose does not define"
    published = {str(p).split(":")[1] for s in compose["services"].values() for p in s.get("ports") or []}
    for port in re.findall(r"127\.0\.0\.1:(\d+)", section):
        assert port in published, f"README points at 127.0.0.1:{port}, which compose does not publish"


def test_readme_commands_are_the_projects(compose, helps):
    section = readme_section()
    dockerfile = DOCKERFILE.read_text()
    checked = set()
    for words in readme_commands(section):
        if words[:3] == ["docker", "compose", "exec"]:
            words = [w for w in words[3:] if not w.startswith("-")][1:]
        if words and words[0] in ("lrkv", "ray"):
            check_project_command(words, helps, f"README: {' '.join(words)}", dockerfile)
            checked.add(tuple(words[:3]))
            spec = next((w for w in words if w.endswith((".yaml", ".yml"))), None)
            if spec:
                assert (ROOT / spec).is_file(), f"README submits {spec}, which is not in the repo"
    assert ("lrkv", "sweep", "submit") in checked and any(w[:2] == ("lrkv", "pareto") for w in checked), checked
    assert "cp .env.example .env" in section and "docker compose up" in section
