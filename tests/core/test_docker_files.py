"""No Docker engine here: parse the Dockerfile and docker-compose.yml and check that they agree with
each other, with the repository and with the settings names of app/config.py."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel

from app.config import Settings
from tests.settings import TEST_JWT_SECRET

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"


# --- a small Dockerfile parser ----------------------------------------------------------------

@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [args for o, args in self.instructions if o == op]

    def last(self, op: str) -> str | None:
        found = self.all(op)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> tuple[list[str], list[Stage]]:
    """Instructions line by line (comments dropped, `\\` continuations joined), split into stages."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1].rstrip() + " "
            continue
        logical.append((buf + line).strip())
        buf = ""
    assert not buf, "the Dockerfile ends inside a continued line"
    global_args: list[str] = []
    stages: list[Stage] = []
    for instr in logical:
        op, _, args = instr.partition(" ")
        op, args = op.upper(), args.strip()
        if op == "FROM":
            parts = args.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].lower() == "as" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert op == "ARG", f"only ARG may come before the first FROM, not {op}"
            global_args.append(args)
        else:
            stages[-1].instructions.append((op, args))
    return global_args, stages


def exec_form(args: str) -> list[str]:
    """CMD/ENTRYPOINT/HEALTHCHECK CMD arguments: JSON exec form or shell form."""
    args = args.strip()
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value
    return ["/bin/sh", "-c", args]


def env_pairs(args: str) -> dict[str, str]:
    tokens = shlex.split(args)
    if len(tokens) >= 2 and "=" not in tokens[0]:  # legacy `ENV KEY value`
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(t.split("=", 1) for t in tokens)


def command_line(argv: list[str]) -> str:
    """The command a shell would run: `sh -c "<script>"` unwrapped."""
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        return argv[2]
    return shlex.join(argv)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(dockerfile: tuple[list[str], list[Stage]]) -> Stage:
    return dockerfile[1][-1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def api(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"]["api"])


def image_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        env.update(env_pairs(args))
    return env


def cmd_port(cmd: str) -> int:
    m = re.search(r"uvicorn\s.*--port[ =](\d+)", cmd)
    assert m, f"CMD does not give uvicorn a --port: {cmd}"
    return int(m.group(1))


# --- settings names ---------------------------------------------------------------------------

def is_setting(env_name: str) -> bool:
    """LLMTUNER_X or LLMTUNER_GROUP__FIELD names a field of Settings (nested groups with `__`)."""
    prefix = Settings.model_config.get("env_prefix", "")
    delim = Settings.model_config.get("env_nested_delimiter") or "__"
    if not env_name.upper().startswith(prefix.upper()):
        return False
    parts = env_name[len(prefix):].lower().split(delim)
    model: type[BaseModel] | None = Settings
    for i, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            return False
        ann = model.model_fields[part].annotation
        model = next((a for a in (ann, *get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None and i < len(parts) - 1:
            return False
    return True


def test_is_setting_walks_nested_groups() -> None:
    assert is_setting("LLMTUNER_DATABASE_URL")
    assert is_setting("LLMTUNER_AWS__S3_BUCKET")
    assert is_setting("LLMTUNER_JWT__SECRET")
    assert not is_setting("LLMTUNER_AWS__NOPE")
    assert not is_setting("LLMTUNER_DATABASE_URL__X")
    assert not is_setting("LLMTUNER_S3_BUCKET")
    assert not is_setting("AWS_REGION")


_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def resolve(value: str | None, shell: dict[str, str]) -> str | None:
    """Compose's interpolation of ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}."""
    if value is None:
        return shell.get("")  # a bare name: passed through from the shell when set there

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        have = shell.get(name)
        if op in (":-", ":?") and not have or op in ("-", "?") and have is None:
            if op.endswith("?"):
                raise KeyError(f"{name}: {arg}")
            return arg
        return have or ""

    return _REF.sub(sub, str(value))


def compose_env(api: dict[str, Any]) -> dict[str, str | None]:
    env = api.get("environment") or {}
    if isinstance(env, list):
        env = dict((item.split("=", 1) + [None])[:2] for item in env)
    return {str(k): (None if v is None else str(v)) for k, v in env.items()}


# --- the Dockerfile ---------------------------------------------------------------------------

def test_multi_stage_build(dockerfile: tuple[list[str], list[Stage]]) -> None:
    _, stages = dockerfile
    assert len(stages) >= 2, "the Dockerfile should be multi-stage (builder + runtime)"
    names = {s.name for s in stages}
    copied_from = {re.search(r"--from=(\S+)", c).group(1)  # type: ignore[union-attr]
                   for c in stages[-1].all("COPY") if "--from=" in c}
    assert copied_from and copied_from <= names, "the runtime stage copies its environment from the builder"
    builder = next(s for s in stages if s.name in copied_from)
    installs = " ".join(builder.all("RUN"))
    build_args = dict(a.split("=", 1) for a in builder.all("ARG") if "=" in a)
    assert "torch==" in installs and "download.pytorch.org/whl/cpu" in installs + " ".join(build_args.values()), \
        "torch from the CPU index"
    import tomllib

    local = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["local"]
    pinned = next(d.split("==")[1] for d in local if d.startswith("torch=="))
    assert build_args.get("TORCH_VERSION", pinned) == pinned, "the image's torch is the one pyproject pins"
    assert re.search(r"pip install [\"']?\.\$\{EXTRAS", installs), "the package is installed with ${EXTRAS}"
    assert any(a.startswith("EXTRAS=local") for a in builder.all("ARG")), "EXTRAS defaults to the local extra"


def test_runtime_runs_as_non_root_user(runtime: Stage) -> None:
    user = runtime.last("USER")
    assert user, "the runtime stage must set USER"
    name = user.split(":")[0]
    assert name not in ("root", "0"), "the runtime stage must not run as root"
    runs = " ".join(runtime.all("RUN"))
    assert re.search(rf"useradd\b.*\b{re.escape(name)}\b", runs), f"user {name} is created in the image"
    m = re.search(r"--uid\s+(\d+)", runs)
    assert m and int(m.group(1)) >= 1000, "a fixed, non-system uid"
    # USER comes after every RUN/COPY that needs root, and before CMD.
    ops = [op for op, _ in runtime.instructions]
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op == "RUN")


def test_data_dir_belongs_to_the_user(runtime: Stage) -> None:
    env = image_env(runtime)
    data_dir = env.get("LLMTUNER_DATA_DIR")
    assert data_dir and data_dir.startswith("/"), "LLMTUNER_DATA_DIR is set to an absolute path"
    user = (runtime.last("USER") or "").split(":")[0]
    assert re.search(rf"chown\s+\S*{re.escape(user)}\S*\s+{re.escape(data_dir)}\b", " ".join(runtime.all("RUN")))
    assert "/opt/venv/bin" in env.get("PATH", ""), "the venv is on PATH"
    assert runtime.last("WORKDIR") == "/srv"
    for name in env:
        if name.startswith("LLMTUNER_"):
            assert is_setting(name), f"Dockerfile ENV {name} is not a setting"


def test_cmd_runs_migrations_then_uvicorn(runtime: Stage) -> None:
    cmd = runtime.last("CMD")
    assert cmd, "the runtime stage has a CMD"
    line = command_line(exec_form(cmd))
    assert "alembic upgrade head" in line, "the CMD applies migrations"
    assert re.search(r"alembic upgrade head\s*&&.*uvicorn", line), "migrations first, and uvicorn only if they pass"
    assert "exec uvicorn" in line or exec_form(cmd)[0] == "uvicorn", "uvicorn replaces the shell (signals)"
    assert "app.main:create_app" in line and "--factory" in line
    assert "--host 0.0.0.0" in line
    exposed = {int(p.split("/")[0]) for e in runtime.all("EXPOSE") for p in e.split()}
    assert cmd_port(line) in exposed, "the CMD's port is EXPOSEd"


def test_served_like_the_api_benchmark(runtime: Stage, api: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/api_load.py measures the API as the image, compose and `make run` serve it: no uvicorn
    access log line per request (uvicorn reads UVICORN_ACCESS_LOG for --[no-]access-log)."""
    spec = importlib.util.spec_from_file_location("api_load", ROOT / "bench" / "api_load.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "api_load", bench)  # (its dataclasses look their module up)
    spec.loader.exec_module(bench)
    assert "--no-access-log" in bench.uvicorn_cmd("app.main:create_app", 8000, 1, ROOT)
    assert image_env(runtime).get("UVICORN_ACCESS_LOG") == "false"
    assert resolve(compose_env(api).get("UVICORN_ACCESS_LOG"), {}) == "false"
    assert re.search(r"^export UVICORN_ACCESS_LOG \?= false$", (ROOT / "Makefile").read_text(), re.M)
    assert "--access-log" not in command_line(exec_form(runtime.last("CMD") or ""))


def test_healthcheck_probes_api_health(runtime: Stage) -> None:
    hc = runtime.last("HEALTHCHECK")
    assert hc, "the runtime stage has a HEALTHCHECK"
    cmd = hc[hc.index("CMD") + 3:]
    line = " ".join(exec_form(cmd))
    assert "urllib.request" in line and "/api/health" in line
    port = cmd_port(command_line(exec_form(runtime.last("CMD") or "")))
    assert f":{port}/api/health" in line


def test_copied_paths_exist(dockerfile: tuple[list[str], list[Stage]]) -> None:
    ignored = {ln.strip().rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    required = {"app", "migrations", "alembic.ini", "training_scripts"}
    copied: set[str] = set()
    for stage in dockerfile[1]:
        for args in stage.all("COPY") + stage.all("ADD"):
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            if "--from=" in args:
                continue
            for src in parts[:-1]:
                src = src.rstrip("/")
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
                assert src not in ignored, f"COPY {src}: excluded by .dockerignore"
                copied.add(src)
    assert required <= copied, f"the image lacks {required - copied}"
    assert ".venv" in ignored and ".git" in ignored


def test_the_package_pyproject_names_the_extras(dockerfile: tuple[list[str], list[Stage]]) -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "local" in extras and any(d.startswith("torch") for d in extras["local"])
    assert not any(d.startswith("torch") for d in tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["dependencies"]), "torch must stay out of the base deps"


# --- docker-compose.yml -----------------------------------------------------------------------

def test_compose_api_matches_dockerfile(api: dict[str, Any], runtime: Stage) -> None:
    assert api["build"] == "." or api["build"]["context"] == "."
    image_cmd = command_line(exec_form(runtime.last("CMD") or ""))
    if "command" in api:  # an override must still run the same thing
        cmd = api["command"]
        line = command_line(cmd if isinstance(cmd, list) else ["sh", "-c", cmd])
        assert line == image_cmd
    port = cmd_port(image_cmd)
    published = [str(p) for p in api["ports"]]
    assert any(p.split(":")[-1].split("/")[0] == str(port) for p in published), published
    args = api["build"].get("args", {}) if isinstance(api["build"], dict) else {}
    declared = {a.split("=")[0] for s in parse_dockerfile(DOCKERFILE.read_text())[1] for a in s.all("ARG")}
    assert set(args) <= declared, f"compose passes build args the Dockerfile lacks: {set(args) - declared}"


def test_compose_env_names_are_settings(api: dict[str, Any]) -> None:
    env = compose_env(api)
    names = [k for k in env if k.startswith("LLMTUNER_")]
    names += [m.group(1) for v in env.values() if v for m in _REF.finditer(v) if m.group(1).startswith("LLMTUNER_")]
    unknown = sorted({n for n in names if not is_setting(n)} - {"LLMTUNER_IMAGE_EXTRAS"})
    assert not unknown, f"not settings of app/config.py: {unknown}"
    for required in ("LLMTUNER_DATABASE_URL", "LLMTUNER_ENV", "LLMTUNER_JWT__SECRET", "LLMTUNER_BACKEND",
                     "LLMTUNER_STORAGE", "LLMTUNER_AWS__REGION", "LLMTUNER_AWS__S3_BUCKET",
                     "LLMTUNER_AWS__ROLE_ARN"):
        assert required in env, f"compose api lacks {required}"
    # The secret must come from the operator: compose refuses to start without it.
    assert re.fullmatch(r"\$\{LLMTUNER_JWT__SECRET:\?[^}]+\}", env["LLMTUNER_JWT__SECRET"] or "")
    # Storage and backend switch from the shell and default to the embedded shape.
    for name, field_name in (("LLMTUNER_BACKEND", "backend"), ("LLMTUNER_STORAGE", "storage")):
        m = re.fullmatch(rf"\$\{{{name}:-(\w+)\}}", env[name] or "")
        assert m and m.group(1) == "local"
        assert m.group(1) in get_args(Settings.model_fields[field_name].annotation)


def test_compose_database_and_volumes(compose: dict[str, Any], api: dict[str, Any], runtime: Stage) -> None:
    db = compose["services"]["db"]
    assert str(db["image"]).startswith("postgres:16")
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert api["depends_on"]["db"]["condition"] == "service_healthy"
    url = compose_env(api)["LLMTUNER_DATABASE_URL"] or ""
    m = re.fullmatch(r"postgresql://(\w+):(\w+)@db:5432/(\w+)", url)
    assert m, url
    pg = db["environment"]
    assert (m.group(1), m.group(2), m.group(3)) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
    data_dir = image_env(runtime)["LLMTUNER_DATA_DIR"]
    mounts = {str(v).split(":")[1] for v in api["volumes"]}
    assert data_dir in mounts, "the data directory is a volume"
    named = set(compose.get("volumes") or {})
    for svc in (api, db):
        for v in svc.get("volumes", []):
            src = str(v).split(":")[0]
            assert src.startswith((".", "/")) or src in named, f"undeclared volume {src}"


@pytest.mark.parametrize("shell", [
    {"LLMTUNER_JWT__SECRET": "x" * 64},
    {"LLMTUNER_JWT__SECRET": "y" * 64, "LLMTUNER_STORAGE": "s3", "LLMTUNER_BACKEND": "sagemaker",
     "LLMTUNER_AWS__S3_BUCKET": "my-bucket", "LLMTUNER_AWS__ROLE_ARN": "arn:aws:iam::123456789012:role/X",
     "LLMTUNER_AWS__REGION": "eu-west-1"},
], ids=["embedded", "cloud"])
def test_settings_load_from_compose_env(api: dict[str, Any], runtime: Stage, shell: dict[str, str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The container's environment (image ENV + compose, interpolated) is a valid production config."""
    for k in list(__import__("os").environ):
        if k.startswith("LLMTUNER_"):
            monkeypatch.delenv(k)
    env = {k: v for k, v in image_env(runtime).items() if k.startswith("LLMTUNER_")}
    for k, v in compose_env(api).items():
        value = shell.get(k) if v is None else resolve(v, shell)
        if value is not None:
            env[k] = value
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.env == "production"
    assert s.resolved_database_url.startswith("postgresql://")
    assert str(s.data_dir) == image_env(runtime)["LLMTUNER_DATA_DIR"]
    assert s.storage == shell.get("LLMTUNER_STORAGE", "local")
    assert s.backend == shell.get("LLMTUNER_BACKEND", "local")
    assert s.aws.s3_bucket == shell.get("LLMTUNER_AWS__S3_BUCKET", "llmtuner-artifacts")
    if "LLMTUNER_AWS__ROLE_ARN" in shell:
        assert s.aws.role_arn == shell["LLMTUNER_AWS__ROLE_ARN"]


def test_compose_refuses_to_start_without_a_secret(api: dict[str, Any]) -> None:
    with pytest.raises(KeyError, match="LLMTUNER_JWT__SECRET"):
        resolve(compose_env(api)["LLMTUNER_JWT__SECRET"], {})


def test_image_run_without_a_secret_refuses_to_start(runtime: Stage, monkeypatch: pytest.MonkeyPatch) -> None:
    """`docker run` of the image without compose: its own ENV alone is production, so a missing
    secret stops the start with an error naming it instead of signing with the built-in one."""
    for k in list(__import__("os").environ):
        if k.startswith("LLMTUNER_"):
            monkeypatch.delenv(k)
    for k, v in image_env(runtime).items():
        if k.startswith("LLMTUNER_"):
            monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match="LLMTUNER_JWT__SECRET is unset"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("LLMTUNER_JWT__SECRET", "z" * 64)
    assert Settings(_env_file=None).env == "production"  # type: ignore[call-arg]


# --- the cloud image: no torch -----------------------------------------------------------------

def test_api_imports_without_torch_for_the_cloud_image(tmp_path: Path) -> None:
    """`docker build --build-arg EXTRAS=` has no torch/transformers/peft: the API must import, build
    its app, store and SageMaker backends without them."""
    script = textwrap.dedent(f"""
        import importlib.abc, os, sys
        BLOCKED = {{"torch", "transformers", "peft", "accelerate", "tokenizers", "sentencepiece"}}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is not installed in the cloud image")
        sys.meta_path.insert(0, Block())
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_EC2_METADATA_DISABLED="true")
        from app.config import AWSSettings, Settings, WorkerSettings
        from app.main import create_app
        from app.wiring import build_backends, build_store
        s = Settings(_env_file=None, env="test", data_dir={str(tmp_path)!r}, backend="sagemaker", storage="s3",
                     jwt={{"secret": {TEST_JWT_SECRET!r}}},
                     aws=AWSSettings(role_arn="arn:aws:iam::123456789012:role/LLMTunerTest"),
                     worker=WorkerSettings(enabled=False))
        create_app(s)
        store = build_store(s)
        build_backends(s, store)
        import app.worker  # noqa: F401
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
