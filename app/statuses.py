"""The status values of training jobs, endpoints and evaluations, and which of them are still active.

StrEnum members equal the strings stored in the database and returned by the API ("InProgress",
"InService", ...), so a value read back from a row compares equal to its member.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    STOPPING = "Stopping"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPED = "Stopped"


class EndpointStatus(StrEnum):
    CREATING = "Creating"
    IN_SERVICE = "InService"
    UPDATING = "Updating"
    FAILED = "Failed"
    DELETING = "Deleting"
    OUT_OF_SERVICE = "OutOfService"
    DELETED = "Deleted"


class EvaluationStatus(StrEnum):
    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    FAILED = "Failed"


# A job is followed by the worker until it has ended.
JOB_ENDED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED)
JOB_ACTIVE = tuple(s for s in JobStatus if s not in JOB_ENDED)

# An endpoint is followed until it failed or was deleted; while live it runs (and costs) compute.
ENDPOINT_ENDED = (EndpointStatus.FAILED, EndpointStatus.DELETED)
ENDPOINT_ACTIVE = tuple(s for s in EndpointStatus if s not in ENDPOINT_ENDED)
ENDPOINT_LIVE = (EndpointStatus.CREATING, EndpointStatus.IN_SERVICE, EndpointStatus.UPDATING)

EVALUATION_ENDED = (EvaluationStatus.COMPLETED, EvaluationStatus.FAILED)
EVALUATION_ACTIVE = (EvaluationStatus.PENDING, EvaluationStatus.IN_PROGRESS)
