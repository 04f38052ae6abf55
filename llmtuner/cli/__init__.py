"""The `llmtuner` command (also `python -m llmtuner`). Exit codes: docs/cli.md."""

from __future__ import annotations

import typer

from llmtuner import __version__
from llmtuner.cli import account, datasets, jobs, serving
from llmtuner.cli._common import state, widen_when_piped

app = typer.Typer(
    name="llmtuner", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
    help="Fine-tune, evaluate, deploy and chat with models on an LLM Tuner server.\n\n"
         "Start with `llmtuner login`; every read command takes --json for scripts.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmtuner {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    base_url: str = typer.Option(None, "--base-url", envvar="LLMTUNER_BASE_URL",
                                 help="The server (default: the saved one, else http://127.0.0.1:8000)."),
    api_key: str = typer.Option(None, "--api-key", envvar="LLMTUNER_API_KEY",
                                help="An API key or token (default: the one `login` saved)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    state.base_url, state.api_key = base_url, api_key


app.command("login")(account.login)
app.command("logout")(account.logout)
app.command("whoami")(account.whoami)
app.add_typer(datasets.app, name="datasets")
app.command("base-models")(account.base_models)
app.command("train")(jobs.train)
app.add_typer(jobs.app, name="jobs")
app.command("download")(jobs.download)
app.command("deploy")(serving.deploy)
app.add_typer(serving.app, name="endpoints")
app.command("chat")(serving.chat)
app.command("eval")(serving.evaluate)
app.command("usage")(account.usage)


def main() -> None:
    widen_when_piped()
    app()
