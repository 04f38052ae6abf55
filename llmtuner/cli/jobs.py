"""`llmtuner train`, `llmtuner jobs ...` and `llmtuner download`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from llmtuner.cli._common import (
    FAILED,
    JobArg,
    JsonOpt,
    api_errors,
    client,
    console,
    err_console,
    fail,
    listing,
    money,
    print_json,
    show,
    when,
)
from llmtuner.cli.follow import follow, sparkline
from llmtuner.types import TrainingConfig, TrainingJob

app = typer.Typer(help="Inspect and control training jobs.", no_args_is_help=True)


def parse_hp(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; values are read as JSON when they parse (numbers, booleans, lists), else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--hp")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


def render_job(job: TrainingJob) -> None:
    colour = {"Completed": "green", "Failed": "red", "InProgress": "cyan"}.get(job.status, "yellow")
    console.print(f"Job [bold]{job.job_name}[/bold]: [{colour}]{job.status}[/{colour}] ({job.secondary_status})")
    p = job.progress
    rows = [("base model", job.base_model), ("dataset", job.dataset_id or "—"),
            ("instance", f"{job.instance_type} ({job.backend})"),
            ("progress", f"step {p.step}/{p.total_steps}, epoch {p.epoch}" if p.step is not None else "—"),
            ("created", when(job.created_at)), ("ended", when(job.ended_at)),
            ("cost", f"{money(job.actual_cost)} (estimated {money(job.estimated_cost)})"),
            ("model", job.model_artifacts_s3_uri or "—")]
    rows += [(m.metric_name, f"{m.value:.4g}") for m in job.training_metrics]
    if job.error:
        rows.append(("error", f"[red]{job.error.message} ({job.error.code})[/red]"))
    table = Table(show_header=False, box=None)
    table.add_column()
    table.add_column(overflow="fold")
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def finish(job: TrainingJob, last_loss: float | None) -> None:
    """The last line of a followed job; exit 1 when it failed."""
    if job.status == "Failed":
        err = job.error
        fail(FAILED, f"Job {job.job_name} failed: {err.message if err else 'no reason given'}"
             + (f" ({err.code})" if err else ""))
    console.print(f"[bold]{job.status}[/bold]: {job.job_name} in {job.billable_seconds} s"
                  + (f" · final loss {last_loss:.4f}" if last_loss is not None else "")
                  + f" · cost {money(job.actual_cost)}", soft_wrap=True)


def train(
    dataset: str = typer.Option(..., "--dataset", "-d", metavar="DATASET|FILE",
                                help="A dataset id, or a file to upload first."),
    base_model: str = typer.Option(None, "--base-model", "-m", metavar="MODEL",
                                   help="A base model id (`llmtuner base-models`; default: the server's)."),
    epochs: int = typer.Option(None, help="Passes over the data."),
    batch_size: int = typer.Option(None, help="Examples per step."),
    learning_rate: float = typer.Option(None, "--learning-rate", "--lr", help="Peak learning rate."),
    lora_rank: int = typer.Option(None, help="LoRA rank."),
    max_length: int = typer.Option(None, help="Tokens per example (longer ones are cut)."),
    max_steps: int = typer.Option(None, help="Stop after this many steps."),
    hp: list[str] = typer.Option([], "--hp", metavar="KEY=VALUE",
                                 help="Any other hyperparameter, e.g. --hp warmup_ratio=0.1 (repeatable)."),
    instance_type: str = typer.Option(None, help="Where to train (default: the server's)."),
    name: str = typer.Option(None, help="A name for the job."),
    follow_job: bool = typer.Option(False, "--follow", "-f", help="Show live progress until the job ends."),
    as_json: bool = JsonOpt,
) -> None:
    """Start a fine-tuning job. With --follow, watch it to the end (exit 1 if it fails)."""
    flags = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "lora_rank": lora_rank,
             "max_length": max_length, "max_steps": max_steps}
    config = TrainingConfig(**{**parse_hp(hp), **{k: v for k, v in flags.items() if v is not None}})
    with api_errors():
        cli = client()
        if Path(dataset).is_file():
            ds = cli.datasets.upload(dataset)
            if not ds.report.is_valid:
                fail(FAILED, f"{dataset} is invalid: see `llmtuner datasets show {ds.id}`")
            err_console.print(f"Uploaded {dataset} as dataset {ds.id}")
            dataset = ds.id
        job = cli.jobs.create(dataset, base_model, config, instance_type=instance_type, name=name)
        if not follow_job:
            return show(job, as_json, lambda j: console.print(f"Started job [bold]{j.job_name}[/bold]"))
        if as_json:
            job = cli.jobs.wait(job, raise_on_failure=False)
            print_json(job)
            raise typer.Exit(FAILED if job.status == "Failed" else 0)
        console.print(f"Started job [bold]{job.job_name}[/bold] on {job.base_model}", soft_wrap=True)
        job, last_loss = follow(cli, job)
    finish(job, last_loss)


@app.command("ls")
def ls(status: str = typer.Option(None, help="InProgress, Completed, Failed, Stopping or Stopped."),
       limit: int = typer.Option(20, help="At most this many."), as_json: bool = JsonOpt) -> None:
    """List your training jobs, newest first."""
    with api_errors():
        jobs = list(client().jobs.list(status=status, limit=limit))
    if as_json:
        return print_json(jobs)
    table = listing("job", "status", "base model", "progress", "train_loss", "cost", "created")
    for j in jobs:
        loss = j.metric("train_loss")
        table.add_row(j.job_name, j.status, j.base_model, f"{j.progress.percent or 0:.0f}%",
                      "" if loss is None else f"{loss:.4f}", money(j.actual_cost), when(j.created_at))
    console.print(table)


@app.command("show")
def show_job(job_name: str = JobArg, as_json: bool = JsonOpt) -> None:
    """Show a job: status, progress, metrics, cost and error."""
    with api_errors():
        job = client().jobs.get(job_name)
    show(job, as_json, render_job)


@app.command("metrics")
def metrics(job_name: str = JobArg, metric: str = typer.Option(None, help="Only this metric (e.g. train_loss)."),
            as_json: bool = JsonOpt) -> None:
    """Print a job's metric time series."""
    with api_errors():
        points = client().jobs.metrics(job_name, metric_name=metric)
    if as_json:
        return print_json(points)
    by_name: dict[str, list[float]] = {}
    for p in points:
        by_name.setdefault(p.metric_name, []).append(p.value)
    table = Table("metric", "points", "first", "last", "trend")
    for n, vals in by_name.items():
        table.add_row(n, str(len(vals)), f"{vals[0]:.4g}", f"{vals[-1]:.4g}", sparkline(vals, 40))
    console.print(table)


@app.command("logs")
def logs(job_name: str = JobArg,
         follow_job: bool = typer.Option(False, "--follow", "-f", help="Keep printing until it ends."),
         poll_interval: float = typer.Option(2.0, hidden=True), as_json: bool = JsonOpt) -> None:
    """Print a job's events (status changes, epochs, checkpoints, errors); -f follows them live."""
    seen = 0
    with api_errors():
        cli = client()
        while True:
            events = cli.jobs.events(job_name)
            for e in events[seen:]:
                if as_json:
                    typer.echo(json.dumps(e.model_dump(mode="json")))
                else:
                    colour = {"error": "red", "warning": "yellow"}.get(e.level, "dim")
                    console.print(f"[{colour}]{when(e.timestamp)}[/{colour}] {e.type:<18} {e.message}")
            seen = len(events)
            if not follow_job:
                return
            job = cli.jobs.get(job_name)
            if job.ended and len(cli.jobs.events(job_name)) == seen:
                raise typer.Exit(FAILED if job.status == "Failed" else 0)
            time.sleep(poll_interval)


@app.command("stop")
def stop(job_name: str = JobArg, as_json: bool = JsonOpt) -> None:
    """Stop a running job."""
    with api_errors():
        job = client().jobs.stop(job_name)
    show(job, as_json, lambda j: console.print(f"{j.job_name}: {j.status}"))


def download(job_name: str = JobArg,
             output: Path = typer.Option(None, "--output", "-o", metavar="DIR", help="Folder (default: ./JOB)."),
             as_json: bool = JsonOpt) -> None:
    """Download a completed job's model and unpack it (adapter, tokenizer, training summary)."""
    with api_errors(), Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), console=console, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"Downloading {job_name}", total=None)
        folder = client().jobs.download(job_name, output,
                                        on_progress=lambda done, total: bar.update(task, completed=done,
                                                                                  total=total or None))
    if as_json:
        return print_json({"job_name": job_name, "path": str(folder.resolve())})
    console.print(f"Model of {job_name} in {folder}")
