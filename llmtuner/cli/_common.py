"""What every command shares: the client from saved or given credentials, output, exit codes."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from llmtuner import errors
from llmtuner.client import Client

# Exit codes (docs/cli.md).
OK, FAILED, USAGE, AUTH, NOT_FOUND, REFUSED, LIMITED, UNAVAILABLE = 0, 1, 2, 3, 4, 5, 6, 7

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
PIPED_WIDTH = 200  # output to a file or a pipe is not cut to 80 columns (COLUMNS overrides)


def widen_when_piped() -> None:
    for c in (console, err_console):
        if not c.is_terminal and not os.environ.get("COLUMNS"):
            c.width = PIPED_WIDTH

JsonOpt = typer.Option(False, "--json", help="Print the result as JSON (for scripts).")
JobArg = typer.Argument(..., metavar="JOB", help="A job name (`llmtuner jobs ls` lists them).")
EndpointArg = typer.Argument(..., metavar="ENDPOINT", help="An endpoint name (`llmtuner endpoints ls`).")
DatasetArg = typer.Argument(..., metavar="DATASET", help="A dataset id (`llmtuner datasets ls`).")


class State:
    base_url: str | None = None
    api_key: str | None = None


state = State()


def config_dir() -> Path:
    """$LLMTUNER_CONFIG_DIR, else the user's config folder ($XDG_CONFIG_HOME/llmtuner on Linux)."""
    return Path(os.environ.get("LLMTUNER_CONFIG_DIR") or typer.get_app_dir("llmtuner"))


def config_path() -> Path:
    return config_dir() / "config.json"


def load_config() -> dict[str, Any]:
    try:
        return dict(json.loads(config_path().read_text()))
    except (OSError, ValueError):
        return {}


def save_config(cfg: dict[str, Any]) -> Path:
    """Written owner-only (0600): it holds a credential."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def base_url() -> str | None:
    return state.base_url or os.environ.get("LLMTUNER_BASE_URL") or load_config().get("base_url")


def client() -> Client:
    """A client from --base-url/--api-key, else LLMTUNER_BASE_URL/LLMTUNER_API_KEY, else `llmtuner login`."""
    cfg = load_config()
    key = state.api_key or os.environ.get("LLMTUNER_API_KEY") or cfg.get("api_key")
    if not key:
        fail(AUTH, "Not logged in: run `llmtuner login`, or set LLMTUNER_API_KEY.")
    return Client(base_url(), key)


def fail(code: int, message: str) -> NoReturn:
    err_console.print(f"[red]Error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(code)


def exit_code_for(e: errors.LLMTunerError) -> int:
    if isinstance(e, errors.AuthenticationError | errors.PermissionDeniedError):
        return AUTH
    if isinstance(e, errors.NotFoundError):
        return NOT_FOUND
    if isinstance(e, errors.RateLimitError):
        return LIMITED
    if isinstance(e, errors.InternalServerError | errors.APIConnectionError):
        return UNAVAILABLE
    if isinstance(e, errors.APIError):
        return REFUSED
    return FAILED


@contextmanager
def api_errors() -> Iterator[None]:
    """Turn the SDK's exceptions into a one-line message and the documented exit code."""
    try:
        yield
    except errors.AuthenticationError as e:
        fail(AUTH, f"{e.message} — check your API key, or run `llmtuner login` again.")
    except errors.APIError as e:
        fail(exit_code_for(e), f"{e.message}" + (f" [{e.param}]" if e.param else "") + f" ({e.code})")
    except errors.LLMTunerError as e:
        fail(exit_code_for(e), str(e))
    except KeyboardInterrupt:
        err_console.print("Interrupted.")
        raise typer.Exit(130) from None


def jsonable(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, list):
        return [jsonable(o) for o in obj]
    return obj


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(jsonable(obj), indent=2))


def show(obj: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """--json prints the API object; otherwise `render` draws it for people."""
    if as_json:
        print_json(obj)
    else:
        render(obj)


def listing(*headers: str, **kw: Any) -> Table:
    """A table whose first column names things (ids, job names): folded onto more lines on a narrow
    terminal, never cut short, so it can be copied."""
    table = Table(*headers, **kw)
    table.columns[0].overflow = "fold"
    return table


def when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "—"


def money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


def interactive() -> bool:
    return sys.stdin.isatty()
