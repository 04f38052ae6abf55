"""The live view of a training job: a progress bar with epoch/step, ETA, latest loss, a loss sparkline
and the cost so far."""

from __future__ import annotations

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from llmtuner.cli._common import console, money
from llmtuner.client import Client
from llmtuner.types import TrainingJob

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 24) -> str:
    """The last `width` values as block characters, lowest ▁ to highest █."""
    values = values[-width:]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * (len(SPARKS) - 1) + 0.5))] for v in values)


def describe(job: TrainingJob) -> str:
    p = job.progress
    if p.step is None:
        return f"{job.status} · {job.secondary_status}"
    epoch = f"epoch {p.epoch or 0:.1f}/{p.epochs or '?'}" if p.epochs else f"epoch {p.epoch or 0:.1f}"
    return f"{epoch} · step {p.step}/{p.total_steps or '?'}"


def follow(cli: Client, job: TrainingJob, poll_interval: float = 1.0) -> TrainingJob:
    """Poll the job until it ends, drawing its progress; returns the final state."""
    losses: list[float] = []
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console, refresh_per_second=4) as bar:
        task = bar.add_task(describe(job), total=None, info="")

        def update(current: TrainingJob) -> None:
            nonlocal losses
            if current.progress.step:
                losses = [m.value for m in cli.jobs.metrics(current, metric_name="train_loss")]
            cost = current.actual_cost if current.actual_cost is not None else current.estimated_cost
            loss = f"loss {losses[-1]:.4f} {sparkline(losses)}" if losses else "loss —"
            bar.update(task, description=describe(current), completed=current.progress.step or 0,
                       total=current.progress.total_steps, info=f"{loss} · cost {money(cost)}")

        return cli.jobs.wait(job, poll_interval=poll_interval, on_progress=update, raise_on_failure=False)
