"""The `llmtuner` command against a live server, through typer's CliRunner: --json output, exit codes,
the live progress of `train --follow`, and the error paths."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from llmtuner.cli import app
from tests.client.conftest import FAST, PASSWORD, TINY_ID, LiveServer


@pytest.fixture
def cli(live_server: LiveServer, tmp_path: Path) -> Any:
    """Run `llmtuner ARGS` with its config in a fresh folder, talking to the live server."""
    runner = CliRunner()
    env = {"LLMTUNER_CONFIG_DIR": str(tmp_path / "config"), "LLMTUNER_BASE_URL": live_server.url,
           "LLMTUNER_API_KEY": None, "LLMTUNER_PASSWORD": None, "NO_COLOR": "1", "COLUMNS": "160"}

    def run(*args: str, code: int = 0) -> Result:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == code, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
        return result

    run.config = tmp_path / "config" / "config.json"  # type: ignore[attr-defined]
    return run


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def login(cli: Any, live_server: LiveServer, username: str) -> None:
    live_server.register(username)
    out = cli("login", "--username", username, "--password", PASSWORD).output
    assert f"Logged in as {username}" in out


def test_journey(cli: Any, live_server: LiveServer, qa_file: Path, tmp_path: Path) -> None:
    login(cli, live_server, "cliuser")
    saved = json.loads(cli.config.read_text())
    assert stat.S_IMODE(cli.config.stat().st_mode) == 0o600 and saved["username"] == "cliuser"
    assert saved["api_key"].startswith("llmt_")  # a key, not the password nor an expiring token
    assert as_json(cli("whoami", "--json"))["username"] == "cliuser"

    ds = as_json(cli("datasets", "upload", str(qa_file), "--json"))
    assert ds["report"]["is_valid"] and ds["report"]["total_examples"] == 24
    assert [d["id"] for d in as_json(cli("datasets", "ls", "--json"))] == [ds["id"]]
    assert "valid" in cli("datasets", "show", ds["id"]).output

    out = cli("train", "--dataset", ds["id"], "--base-model", TINY_ID, "--epochs", str(FAST["epochs"]),
              "--batch-size", "4", "--lr", str(FAST["learning_rate"]), "--max-length", "64",
              "--hp", "logging_steps=1", "--follow").output
    assert "━" in out and "step" in out and "loss" in out  # the progress bar's last frame
    assert "Completed" in out and "final loss" in out
    [job] = as_json(cli("jobs", "ls", "--json"))
    name = job["job_name"]
    shown = as_json(cli("jobs", "show", name, "--json"))
    assert shown["status"] == "Completed" and shown["hyperparameters"]["epochs"] == FAST["epochs"]
    assert "InProgress -> Completed" in cli("jobs", "logs", name, "--follow").output
    assert {p["metric_name"] for p in as_json(cli("jobs", "metrics", name, "--json"))} >= {"train_loss"}

    folder = Path(as_json(cli("download", name, "-o", str(tmp_path / "model"), "--json"))["path"])
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "training_summary.json").is_file()

    ep = as_json(cli("deploy", name, "--name", "cli-bot", "--json"))
    assert ep["endpoint_name"] == "cli-bot-endpoint" and ep["status"] == "InService"
    assert ep["instance_type"] == "local"  # where the job trained
    assert [e["endpoint_name"] for e in as_json(cli("endpoints", "ls", "--json"))] == ["cli-bot-endpoint"]
    for mode in ("--stream", "--no-stream"):  # streamed (where the server offers it), and invoked
        assert cli("chat", "cli-bot-endpoint", "-m", "How do I reset my password?", "--max-tokens", "8",
                   mode).output.strip()
    assert as_json(cli("endpoints", "rm", "cli-bot-endpoint", "--json"))["status"] in ("Deleting", "Deleted")

    ev = as_json(cli("eval", name, "--max-examples", "2", "--max-new-tokens", "4", "--no-probe", "--json"))
    assert ev["status"] == "Completed" and ev["results"]["base"] and "perplexity" in ev["results"]["tuned"]
    usage = as_json(cli("usage", "--json"))
    assert [j["job_name"] for j in usage["training"]["jobs"]] == [name]
    assert "cli-bot-endpoint" in [e["endpoint_name"] for e in usage["inference"]["endpoints"]]


def test_bad_file_is_reported_by_line(cli: Any, live_server: LiveServer, bad_file: Path) -> None:
    login(cli, live_server, "clibadfile")
    out = cli("datasets", "upload", str(bad_file), code=1).output
    assert "invalid" in out and "line" in out
    lines = {int(m.group(1)) for row in out.splitlines() if (m := re.match(r"\W*(\d+)\s", row))}
    assert {2, 3} <= lines
    report = as_json(cli("datasets", "upload", str(bad_file), "--json", code=1))["report"]
    assert not report["is_valid"] and {i["line"] for i in report["issues"]} >= {2, 3}


def test_failed_job_exits_non_zero_with_its_error(cli: Any, live_server: LiveServer, qa_file: Path) -> None:
    login(cli, live_server, "clifail")
    ds = as_json(cli("datasets", "upload", str(qa_file), "--json"))
    out = cli("train", "-d", ds["id"], "-m", TINY_ID, "--max-steps", "1",
              "--hp", 'lora_target_modules=["no_such_module"]', "--follow", code=1).output
    assert "failed" in out and "no_such_module" in out
    [job] = as_json(cli("jobs", "ls", "--json"))
    assert job["status"] == "Failed" and job["error"]["code"]
    assert "Failed" in cli("jobs", "logs", job["job_name"], "-f", code=1).output  # followed to its end
    assert "job_not_running" in cli("jobs", "stop", job["job_name"], code=5).output  # 409: it already ended


def test_credential_errors(cli: Any, live_server: LiveServer) -> None:
    out = cli("whoami", code=3).output
    assert "Not logged in" in out and "llmtuner login" in out
    live_server.register("cliwrong")
    out = cli("login", "--username", "cliwrong", "--password", "not the password", code=3).output
    assert "Login failed" in out
    assert not cli.config.exists()
    out = cli("--api-key", "llmt_not-a-real-key", "whoami", code=3).output
    assert "API key" in out


def test_refused_requests_and_missing_things(cli: Any, live_server: LiveServer, qa_file: Path) -> None:
    login(cli, live_server, "clirefused")
    assert "No " in cli("jobs", "show", "llm-tune-nobody-x-20250101-000000", code=4).output
    ds = as_json(cli("datasets", "upload", str(qa_file), "--json"))
    out = cli("train", "-d", ds["id"], "--lr", "-1", code=5).output
    assert "hyperparameters.learning_rate" in out
    assert cli("train", "-d", ds["id"], "--hp", "oops", code=2).exit_code == 2


def test_help_of_every_command_and_python_m(cli: Any) -> None:
    top = cli("--help").output
    commands = ["login", "logout", "whoami", "base-models", "train", "download", "deploy", "chat", "eval", "usage"]
    groups = {"datasets": ["upload", "ls", "show", "preview", "rm"], "jobs": ["ls", "show", "metrics", "logs", "stop"],
              "endpoints": ["ls", "show", "rm"]}
    for c in [*commands, *groups]:
        assert c in top
    for c in commands:
        assert "Usage:" in cli(c, "--help").output
    for g, subs in groups.items():
        for s in subs:
            assert "Usage:" in cli(g, s, "--help").output
    res = subprocess.run([sys.executable, "-m", "llmtuner", "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("llmtuner ")
