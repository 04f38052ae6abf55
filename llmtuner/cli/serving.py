"""`llmtuner deploy`, `endpoints ...`, `chat`, `eval`."""

from __future__ import annotations

import typer
from rich.table import Table

from llmtuner import errors
from llmtuner.cli._common import (
    FAILED,
    EndpointArg,
    JsonOpt,
    api_errors,
    client,
    console,
    err_console,
    interactive,
    listing,
    money,
    print_json,
    show,
    when,
)
from llmtuner.client import Client
from llmtuner.types import Endpoint, Evaluation

app = typer.Typer(help="Inspect and delete inference endpoints.", no_args_is_help=True)


def render_endpoint(ep: Endpoint) -> None:
    colour = {"InService": "green", "Failed": "red"}.get(ep.status, "yellow")
    console.print(f"Endpoint [bold]{ep.endpoint_name}[/bold]: [{colour}]{ep.status}[/{colour}]"
                  + (f" — {ep.failure_reason}" if ep.failure_reason else ""))
    console.print(f"  model {ep.model_name} (job {ep.job_name or '—'}) on {ep.instance_type} ×"
                  f"{ep.initial_instance_count} · {money(ep.estimated_cost_per_hour)}/h · "
                  f"accrued {money(ep.accrued_cost)}")


def deploy(
    job_name: str = typer.Argument(..., metavar="JOB", help="The completed job whose model to serve."),
    model_name: str = typer.Option(None, "--name", "-n", help="Model name; the endpoint is NAME-endpoint "
                                   "(default: the job name)."),
    instance_type: str = typer.Option(None, help="e.g. local, ml.g5.xlarge (default: local for a job trained "
                                      "locally, else the server's default)."),
    instance_count: int = typer.Option(None, help="Instances behind the endpoint."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the endpoint is InService."),
    as_json: bool = JsonOpt,
) -> None:
    """Deploy a trained model to an inference endpoint."""
    with api_errors():
        cli = client()
        if instance_type is None and cli.jobs.get(job_name).instance_type == "local":
            instance_type = "local"  # served where it was trained, rather than priced as a cloud GPU
        # The API allows 50 characters for a model name: a long job name is cut from its start.
        dep = cli.endpoints.deploy(job_name, model_name=model_name or job_name[-50:].strip("-"),
                                   instance_type=instance_type,
                                   initial_instance_count=instance_count)
        name = dep.deployment.endpoint_name
        if not wait:
            return show(dep, as_json, lambda d: console.print(f"Deploying [bold]{name}[/bold] ({d.deployment.status})"))
        with console.status(f"Starting {name}…", spinner="dots"):
            ep = cli.endpoints.wait(name)
    show(ep, as_json, render_endpoint)


@app.command("ls")
def ls(all_: bool = typer.Option(False, "--all", help="Include deleted endpoints."),
       as_json: bool = JsonOpt) -> None:
    """List your endpoints, newest first."""
    with api_errors():
        eps = list(client().endpoints.list(include_deleted=all_))
    if as_json:
        return print_json(eps)
    table = listing("endpoint", "status", "model", "instance", "per hour", "accrued", "created")
    for e in eps:
        table.add_row(e.endpoint_name, e.status, e.model_name, e.instance_type, money(e.estimated_cost_per_hour),
                      money(e.accrued_cost), when(e.created_at))
    console.print(table)


@app.command("show")
def show_endpoint(endpoint_name: str = EndpointArg, as_json: bool = JsonOpt) -> None:
    """Show an endpoint's status and cost."""
    with api_errors():
        ep = client().endpoints.get(endpoint_name)
    show(ep, as_json, render_endpoint)


@app.command("rm")
def rm(endpoint_name: str = EndpointArg, as_json: bool = JsonOpt) -> None:
    """Delete an endpoint (its cost stops now)."""
    with api_errors():
        ep = client().endpoints.delete(endpoint_name)
    show(ep, as_json, lambda e: console.print(f"{e.endpoint_name}: {e.status}"))


def _reply(cli: Client, target: str, history: list[dict[str, str]], max_tokens: int, stream: bool) -> str:
    """Stream from /v1/chat/completions when the server offers it (`model`: an endpoint, model or adapter
    name), else one /api/invoke-model call on the endpoint with the last message."""
    if stream:
        try:
            text = ""
            for piece in cli.chat_stream(target, history, max_tokens=max_tokens):
                console.print(piece, end="", soft_wrap=True, markup=False, highlight=False)
                text += piece
            console.print()
            return text
        except errors.NotFoundError:
            pass  # no OpenAI-compatible route on this server, or it does not know the name: invoke it
    prompt = history[-1]["content"]
    out = cli.endpoints.invoke(target, prompt, max_new_tokens=max_tokens).generated_text
    text = out[len(prompt):] if out.startswith(prompt) else out
    console.print(text, markup=False, highlight=False)
    return text


def chat(target: str = typer.Argument(..., metavar="ENDPOINT_OR_MODEL",
                                      help="An InService endpoint, or a deployed model or adapter name."),
         message: list[str] = typer.Option([], "--message", "-m", metavar="TEXT",
                                           help="Send this instead of asking (repeatable)."),
         max_tokens: int = typer.Option(128, help="Tokens to generate per reply."),
         stream: bool = typer.Option(True, "--stream/--no-stream", help="Stream replies when the server can.")
         ) -> None:
    """Chat with a deployed model. Interactive (an empty line or Ctrl-D ends), or -m for one-shot messages."""
    with api_errors():
        cli = client()
        history: list[dict[str, str]] = []
        pending = list(message)
        while True:
            if pending:
                text = pending.pop(0)
            elif message or not interactive():
                return
            else:
                try:
                    text = console.input("[bold]you>[/bold] ")
                except EOFError:
                    return
            if not text.strip():
                return
            history.append({"role": "user", "content": text})
            if interactive():
                console.print("[bold]model>[/bold] ", end="")
            history.append({"role": "assistant", "content": _reply(cli, target, history, max_tokens, stream)})


def render_evaluation(ev: Evaluation) -> None:
    res = ev.results
    console.print(f"Evaluation [bold]{ev.id}[/bold] of {ev.job_name} on {ev.dataset}: {ev.status}")
    if res is None:
        return
    table = Table("metric", "base", "tuned", "improvement", title=f"tuned vs base ({ev.base_model})")
    fmt = lambda v: "—" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    for name in ev.metrics or list(res.tuned):
        table.add_row(name, fmt((res.base or {}).get(name)), fmt(res.tuned.get(name)),
                      fmt((res.improvement or {}).get(name)))
    console.print(table)
    gc = res.general_capability
    if gc is not None:
        console.print(f"General capability probe: tuned {gc.tuned.passed}/{gc.tuned.total}"
                      + (f", base {gc.base.passed}/{gc.base.total}" if gc.base else "")
                      + (" — [red]forgetting[/red]" if gc.forgetting else ""))


def evaluate(job_name: str = typer.Argument(..., metavar="JOB", help="A completed job (or a registered model id)."),
             dataset: str = typer.Option(None, help="A dataset id (default: the job's validation split)."),
             max_examples: int = typer.Option(None, help="Examples to score."),
             base: bool = typer.Option(True, "--base/--no-base", help="Compare with the base model."),
             probe: bool = typer.Option(True, "--probe/--no-probe",
                                        help="Also run the general-capability probe (checks for forgetting)."),
             max_new_tokens: int = typer.Option(None, help="Tokens to generate per example."),
             wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the results."),
             as_json: bool = JsonOpt) -> None:
    """Evaluate a tuned model against its base model and print the metrics side by side."""
    with api_errors():
        cli = client()
        ev = cli.evaluations.create(job_name, dataset=dataset, max_examples=max_examples, compare_with_base=base,
                                    include_general_probe=probe,
                                    generation=None if max_new_tokens is None else {"max_new_tokens": max_new_tokens})
        if wait:
            with console.status(f"Evaluating {job_name}…", spinner="dots") as status:
                ev = cli.evaluations.wait(ev, on_progress=lambda e: status.update(
                    f"Evaluating {job_name}: {e.progress.done}/{e.progress.total} {e.progress.phase or ''}"
                    if e.progress else f"Evaluating {job_name}: {e.status}"))
    show(ev, as_json, render_evaluation)
    if ev.status == "Failed":
        err_console.print(f"Evaluation failed: {ev.error.message if ev.error else ''}")
        raise typer.Exit(FAILED)
