"""`llmtuner datasets ...`: upload (with its validation report), ls, show, preview, rm."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from llmtuner.cli._common import (
    FAILED,
    DatasetArg,
    JsonOpt,
    api_errors,
    client,
    console,
    listing,
    print_json,
    show,
    when,
)
from llmtuner.types import Dataset

app = typer.Typer(help="Upload and inspect training datasets.", no_args_is_help=True)


def render_report(ds: Dataset) -> None:
    r = ds.report
    colour = "green" if r.is_valid else "red"
    console.print(f"Dataset [bold]{ds.id}[/bold] ({ds.filename}, {ds.size_bytes:,} bytes): "
                  f"[{colour}]{ds.status}[/{colour}]")
    console.print(f"  format {r.format or '?'} · {r.valid_examples} of {r.total_examples} examples valid · "
                  f"{r.duplicates} duplicates · avg prompt {r.avg_prompt_length:.0f} / "
                  f"response {r.avg_response_length:.0f} characters")
    if r.token_stats:
        stats = ", ".join(f"{k} {v}" for k, v in r.token_stats.items() if not isinstance(v, dict | list))
        console.print(f"  tokens: {stats}")
    if r.issues:
        table = Table("line", "severity", "field", "code", "message", title="Issues")
        for i in r.issues:
            table.add_row("—" if i.line is None else str(i.line), i.severity, i.field or "", i.code, i.message)
        console.print(table)
        if r.issues_truncated:
            console.print(f"  … and {r.issues_truncated} more issues")


@app.command("upload")
def upload(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, metavar="FILE",
                                help="JSONL, JSON, CSV/TSV or .txt"),
    name: str = typer.Option(None, help="A name for the dataset (default: the file name)."),
    format: str = typer.Option(None, help="Override format detection (e.g. jsonl, csv, txt)."),
    prompt_column: str = typer.Option(None, help="CSV: the prompt column."),
    response_column: str = typer.Option(None, help="CSV: the response column."),
    base_model: str = typer.Option(None, help="Add token statistics for this base model's tokenizer."),
    as_json: bool = JsonOpt,
) -> None:
    """Upload a dataset and print its validation report (problems by line number).

    Exits 1 when the file is invalid (it is still stored, so you can inspect it with `datasets show`)."""
    with api_errors(), Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), console=console, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"Uploading {file.name}", total=file.stat().st_size)
        ds = client().datasets.upload(file, name=name, format=format, prompt_column=prompt_column,
                                      response_column=response_column, base_model=base_model,
                                      on_progress=lambda done, total: bar.update(task, completed=done))
    show(ds, as_json, render_report)
    if not ds.report.is_valid:
        raise typer.Exit(FAILED)


@app.command("ls")
def ls(limit: int = typer.Option(50, help="At most this many."), as_json: bool = JsonOpt) -> None:
    """List your datasets, newest first."""
    with api_errors():
        rows = list(client().datasets.list(limit=limit))
    if as_json:
        return print_json(rows)
    table = listing("id", "name", "status", "format", "examples", "created")
    for d in rows:
        table.add_row(d.id, d.name, d.status, d.format or "", str(d.num_examples), when(d.created_at))
    console.print(table)


@app.command("show")
def show_dataset(dataset_id: str = DatasetArg,
                 base_model: str = typer.Option(None, help="Token statistics for this model."),
                 as_json: bool = JsonOpt) -> None:
    """Show a dataset and its validation report."""
    with api_errors():
        ds = client().datasets.get(dataset_id, base_model=base_model)
    show(ds, as_json, render_report)


@app.command("preview")
def preview(dataset_id: str = DatasetArg, limit: int = typer.Option(5, help="How many records."),
            as_json: bool = JsonOpt) -> None:
    """Show the first records as converted to the training format."""
    with api_errors():
        pv = client().datasets.preview(dataset_id, limit=limit)
    if as_json:
        return print_json(pv)
    for record in pv.data:
        console.print_json(data=record)


@app.command("rm")
def rm(dataset_id: str = DatasetArg) -> None:
    """Delete a dataset and its files."""
    with api_errors():
        client().datasets.delete(dataset_id)
    console.print(f"Deleted dataset {dataset_id}")
