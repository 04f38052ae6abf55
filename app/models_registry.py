"""Imports every ORM model so that Base.metadata is complete (Alembic, tests)."""

from app.api_keys.models import ApiKey
from app.auth.models import User
from app.datasets.models import Dataset
from app.deployments.models import Endpoint, EndpointAdapter, InferenceRecord
from app.evaluation.models import Evaluation
from app.events import Event
from app.idempotency import IdempotencyRecord
from app.leases import Lease
from app.registry.models import RegisteredModel
from app.training.models import JobMetric, TrainingJob
from app.usage.days import JobCostDay

__all__ = ["ApiKey", "User", "Dataset", "Endpoint", "EndpointAdapter", "InferenceRecord", "Evaluation", "Event",
           "IdempotencyRecord", "Lease", "RegisteredModel",
           "JobMetric", "TrainingJob", "JobCostDay"]
