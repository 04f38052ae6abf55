"""The live view of a training job: a progress bar with epoch/step, elapsed time and ETA, and under it
the latest loss, a sparkline of the loss so far and the cost so far."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import RenderableType
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from llmtuner.cli._common import console, money
from llmtuner.client import Client
from llmtuner.types import TrainingJob

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 30) -> str:
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
    epochs = f"/{p.epochs:g}" if p.epochs else ""
    return f"epoch {p.epoch or 0:.1f}{epochs} · step {p.step}/{p.total_steps or '?'}"


class _JobProgress(Progress):
    """One bar, and a line of loss and cost under it (kept apart so a narrow terminal shows both)."""

    info: RenderableType = Text("")

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        yield self.info


def follow(cli: Client, job: TrainingJob, poll_interval: float = 1.0) -> tuple[TrainingJob, float | None]:
    """Poll the job until it ends, drawing its progress; returns its final state and last logged loss."""
    losses: list[float] = []
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with _JobProgress(*columns, console=console, refresh_per_second=4) as bar:
        task = bar.add_task(describe(job), total=None)

        def update(current: TrainingJob) -> None:
            nonlocal losses
            if current.progress.step:
                losses = [m.value for m in cli.jobs.metrics(current, metric_name="train_loss")]
            cost = current.actual_cost if current.actual_cost is not None else current.estimated_cost
            bar.info = Text(f"  loss {losses[-1]:.4f} {sparkline(losses)}" if losses else "  loss —",
                            no_wrap=True, overflow="ellipsis")
            bar.info.append(f"  cost {money(cost)}")
            bar.update(task, description=describe(current), completed=current.progress.step or 0,
                       total=current.progress.total_steps)

        final = cli.jobs.wait(job, poll_interval=poll_interval, on_progress=update, raise_on_failure=False)
    return final, losses[-1] if losses else None
