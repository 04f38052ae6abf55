"""`llmtuner login/logout/whoami`, `usage`, `base-models`."""

from __future__ import annotations

import socket

import typer
from rich.table import Table

from llmtuner import errors
from llmtuner.cli._common import (
    AUTH,
    JsonOpt,
    api_errors,
    base_url,
    client,
    config_path,
    console,
    err_console,
    fail,
    listing,
    load_config,
    money,
    print_json,
    save_config,
    show,
    state,
)
from llmtuner.client import Client
from llmtuner.types import Usage


def login(
    api_key: str = typer.Option(None, "--api-key", help="Store this API key (llmt_...) instead of logging in "
                                "with a password.", envvar="LLMTUNER_API_KEY"),
    username: str = typer.Option(None, "--username", "-u", help="Your username (asked when not given)."),
    password: str = typer.Option(None, "--password", help="Your password (asked, hidden, when not given).",
                                 envvar="LLMTUNER_PASSWORD"),
) -> None:
    """Log in and save the credential (owner-only file in your config folder).

    With a username and password, creates an API key named after this machine and saves that, so no
    password is stored; a server without API keys gets its (expiring) login token saved instead."""
    url, key = base_url(), api_key or state.api_key
    try:
        if key:
            secret, note = key, "API key"
            user = Client(url, key).me()
        else:
            username = username or typer.prompt("Username")
            password = password or typer.prompt("Password", hide_input=True)
            cli = Client(url, username=username, password=password)
            user = cli.me()
            try:
                secret = cli.api_keys.create(f"llmtuner-cli@{socket.gethostname()}"[:100], scope="full").key
                note = "a new API key"
            except errors.NotFoundError:
                secret = cli._token or ""
                note = "a login token (this server has no API keys: log in again when it expires)"
    except errors.AuthenticationError as e:
        fail(AUTH, f"Login failed: {e.message}")
    except errors.LLMTunerError as e:
        with api_errors():
            raise e
    cfg = load_config()
    cfg.update({"api_key": secret, "username": user.username})
    if url:
        cfg["base_url"] = url
    path = save_config(cfg)
    console.print(f"Logged in as [bold]{user.username}[/bold] at {url or 'the default server'}; saved {note} "
                  f"to {path}", soft_wrap=True)


def logout() -> None:
    """Forget the saved credential."""
    cfg = load_config()
    cfg.pop("api_key", None)
    save_config(cfg)
    console.print(f"Logged out (removed the credential from {config_path()})")


def whoami(as_json: bool = JsonOpt) -> None:
    """Show who the saved or given credential belongs to."""
    with api_errors():
        user = client().me()
    show(user, as_json, lambda u: console.print(f"{u.username} <{u.email}>"))


def render_usage(u: Usage) -> None:
    table = Table("", "this month", "all time", title=f"Usage ({u.month}, {u.currency})")
    table.add_row("training", money(u.training.this_month), money(u.training.total))
    table.add_row("inference", money(u.inference.this_month), money(u.inference.total))
    table.add_row("evaluation", money(u.evaluation.this_month), money(u.evaluation.total))
    table.add_row("[bold]total[/bold]", money(u.this_month), money(u.total))
    console.print(table)
    if u.budget:
        console.print(f"Budget {money(u.budget.monthly_budget)}: {money(u.budget.remaining)} left"
                      + (" — [red]exceeded[/red]" if u.budget.exceeded else ""))
    for w in u.warnings:
        err_console.print(f"[yellow]Warning:[/yellow] {w.message}")


def usage(as_json: bool = JsonOpt) -> None:
    """Your training, inference and evaluation cost so far, and the budget left."""
    with api_errors():
        u = client().usage()
    show(u, as_json, render_usage)


def base_models(as_json: bool = JsonOpt) -> None:
    """List the base models you can fine-tune."""
    with api_errors():
        models = client().base_models()
    if as_json:
        return print_json(models)
    table = listing("id", "family", "parameters", "task", "max length")
    for m in models:
        table.add_row(m["id"], m.get("family", ""), f"{m.get('parameters', 0):,}", m.get("task", ""),
                      str(m.get("max_length", "")))
    console.print(table)
