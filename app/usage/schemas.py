from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class JobCost(BaseModel):
    job_name: str
    status: str
    cost: float
    billable_seconds: int
    estimated_cost: float
    instance_type: str
    created_at: datetime


class TrainingUsage(BaseModel):
    total: float
    this_month: float
    jobs: list[JobCost]


class EndpointCost(BaseModel):
    endpoint_name: str
    status: str
    accrued_cost: float
    this_month: float
    price_per_hour: float
    instance_type: str
    created_at: datetime
    deleted_at: datetime | None


class InferenceUsage(BaseModel):
    total: float
    this_month: float
    endpoints: list[EndpointCost]


class EvaluationCost(BaseModel):
    id: str
    status: str
    cost: float
    billable_seconds: int
    created_at: datetime


class EvaluationUsage(BaseModel):
    total: float
    this_month: float
    evaluations: list[EvaluationCost]


class Budget(BaseModel):
    monthly_budget: float
    spent_this_month: float
    remaining: float
    exceeded: bool


class UsageWarning(BaseModel):
    code: str
    message: str
    endpoint_name: str | None = None


class Usage(BaseModel):
    """What was spent, per job, endpoint and evaluation, in total and this month."""

    currency: str = "USD"
    month: str
    training: TrainingUsage
    inference: InferenceUsage
    evaluation: EvaluationUsage
    total: float
    this_month: float
    budget: Budget | None
    warnings: list[UsageWarning]
