"""The status enums: the strings the database and the API already use, each status active or ended."""

from __future__ import annotations

from app.statuses import (
    ENDPOINT_ACTIVE,
    ENDPOINT_ENDED,
    ENDPOINT_LIVE,
    EVALUATION_ACTIVE,
    EVALUATION_ENDED,
    JOB_ACTIVE,
    JOB_ENDED,
    EndpointStatus,
    EvaluationStatus,
    JobStatus,
)


def test_every_status_is_active_or_ended() -> None:
    for enum, active, ended in ((JobStatus, JOB_ACTIVE, JOB_ENDED), (EndpointStatus, ENDPOINT_ACTIVE, ENDPOINT_ENDED),
                                (EvaluationStatus, EVALUATION_ACTIVE, EVALUATION_ENDED)):
        assert set(active) | set(ended) == set(enum) and not set(active) & set(ended)
    assert set(ENDPOINT_LIVE) <= set(ENDPOINT_ACTIVE)


def test_values_are_the_stored_strings() -> None:
    assert [s.value for s in JobStatus] == ["Pending", "InProgress", "Stopping", "Completed", "Failed", "Stopped"]
    assert [s.value for s in EndpointStatus] == ["Creating", "InService", "Updating", "Failed", "Deleting",
                                                 "OutOfService", "Deleted"]
    assert JobStatus.IN_PROGRESS == "InProgress" and f"{EndpointStatus.IN_SERVICE}" == "InService"
