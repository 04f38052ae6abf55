from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field


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
    count: int = Field(description="how many jobs you have in all")
    jobs: list[JobCost] = Field(description="the newest `limit`")


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
    count: int = Field(description="how many endpoints you have had in all")
    endpoints: list[EndpointCost] = Field(description="the newest `limit`")


class EvaluationCost(BaseModel):
    id: str
    status: str
    cost: float
    billable_seconds: int
    created_at: datetime


class EvaluationUsage(BaseModel):
    total: float
    this_month: float
    count: int = Field(description="how many evaluations you have run in all")
    evaluations: list[EvaluationCost] = Field(description="the newest `limit`")


class DailySpend(BaseModel):
    """One UTC day's spend: jobs and evaluations on the day they were created, an endpoint's cost
    spread evenly over the time it was up."""

    day: date
    training: float
    inference: float
    evaluation: float


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
    daily: list[DailySpend] = Field(description="the last 30 days, oldest first, today last")
    total: float
    this_month: float
    budget: Budget | None
    warnings: list[UsageWarning]
