"""What a user can do with a job now: download, deploy, evaluate or register it once completed; stop it
while it runs."""

from __future__ import annotations

from app.statuses import JobStatus
from app.training.models import TrainingJob
from app.training.schemas import Action, JobActions


def for_job(job: TrainingJob) -> JobActions:
    done = job.status == JobStatus.COMPLETED and bool(job.model_artifacts_uri)
    running = job.status in (JobStatus.IN_PROGRESS, JobStatus.STOPPING)
    stoppable = job.status == JobStatus.IN_PROGRESS
    why = None if done else f"the job is {job.status}; this needs a Completed job"
    name = job.job_name
    return JobActions(job_name=name, status=job.status, actions=[
        Action(name="download", available=done, method="GET", path=f"/api/model-download/{name}", reason=why),
        Action(name="deploy", available=done, method="POST", path="/api/deploy-model", reason=why,
               body={"job_name": name, "model_name": "my-model", "instance_type": "ml.g5.xlarge"}),
        Action(name="evaluate", available=done, method="POST", path="/api/evaluations", reason=why,
               body={"model": name, "compare_with_base": True}),
        Action(name="register", available=done, method="POST", path="/api/models", reason=why,
               body={"job_name": name, "model_name": "my-model", "description": "", "tags": []}),
        Action(name="stop", available=stoppable, method="POST", path=f"/api/training-job/{name}/stop",
               reason=None if stoppable else ("already stopping" if running else "job has ended")),
    ])
