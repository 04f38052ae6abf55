"""Reading a training job's CloudWatch log streams without running into the account's API limits.

CloudWatch Logs limits DescribeLogStreams and GetLogEvents per account and region (a few to a few
dozen calls a second, shared by everything in the account), so a worker that polls every running
job every 2 s must not list and read every stream each time:

* stream names are listed until the job's first stream appears, then kept in the job's handle (a
  one-instance job writes one stream; it is listed again only when the job ends, to catch late ones);
* a stream with nothing new is read again after a wait that doubles up to `MAX_WAIT_SECONDS`, and
  is read at once again when lines come;
* a throttled call stops this pass and waits at least `THROTTLED_WAIT_SECONDS`;
* when the job has ended, the streams are read to their end once, whatever the wait.

The state lives in the handle (`log_streams`, `log_tokens`, `log_wait`, `log_next_at`), so it
survives a worker restart.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from app.backends.sagemaker_metrics import event_lines

log = logging.getLogger("llmtuner.sagemaker")

TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
# Pages of new events read per stream per pass (10,000 events or 1 MB a page).
MAX_LOG_PAGES = 5
MIN_WAIT_SECONDS = 2.0
MAX_WAIT_SECONDS = 60.0
THROTTLED_WAIT_SECONDS = 30.0
THROTTLING = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException", "LimitExceededException"})


class LogReader:
    def __init__(self, logs_client: Any, clock: Any = time.time) -> None:
        self.logs, self.clock = logs_client, clock

    def read(self, job_name: str, handle: dict[str, Any], ended: bool) -> tuple[list[str], dict[str, Any]]:
        """New train.py event lines and the handle keys to update. Never raises for a Logs problem:
        the job's status still comes through and the lines are read on a later pass."""
        now = float(self.clock())
        streams: list[str] = list(handle.get("log_streams") or [])
        tokens: dict[str, str] = dict(handle.get("log_tokens") or {})
        wait = float(handle.get("log_wait") or MIN_WAIT_SECONDS)
        next_at = float(handle.get("log_next_at") or 0.0)
        if not ended and now < next_at:
            return [], {}
        lines: list[str] = []
        try:
            if not streams or ended:
                streams = sorted(set(streams) | set(self._streams(job_name)))
            for stream in streams:
                self._read_stream(stream, tokens, lines)
            wait = MIN_WAIT_SECONDS if lines else min(MAX_WAIT_SECONDS, wait * 2)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code") or "")
            if code in THROTTLING:
                wait = max(THROTTLED_WAIT_SECONDS, min(MAX_WAIT_SECONDS, wait * 2))
                log.info("CloudWatch Logs throttled reading %s; next read in %.0f s", job_name, wait)
            else:
                if code != "ResourceNotFoundException":  # no log group or stream yet: not started
                    log.warning("reading CloudWatch logs of %s failed: %s", job_name, e)
                wait = min(MAX_WAIT_SECONDS, wait * 2)
        except BotoCoreError as e:
            log.warning("reading CloudWatch logs of %s failed: %s", job_name, e)
            wait = min(MAX_WAIT_SECONDS, wait * 2)
        return lines, {"log_streams": streams, "log_tokens": tokens, "log_wait": wait, "log_next_at": now + wait}

    def _streams(self, job_name: str) -> list[str]:
        streams: list[str] = []
        kwargs: dict[str, Any] = {"logGroupName": TRAINING_LOG_GROUP, "logStreamNamePrefix": f"{job_name}/"}
        for _ in range(4):
            r = self.logs.describe_log_streams(**kwargs)
            streams += [s["logStreamName"] for s in r.get("logStreams", [])]
            if not r.get("nextToken"):
                break
            kwargs["nextToken"] = r["nextToken"]
        return streams

    def _read_stream(self, stream: str, tokens: dict[str, str], lines: list[str]) -> None:
        # Lines go straight into `lines`, page by page, as the stream's token moves on: a later
        # page's failure must not lose what an earlier page read.
        for _ in range(MAX_LOG_PAGES):
            kw: dict[str, Any] = {"logGroupName": TRAINING_LOG_GROUP, "logStreamName": stream, "startFromHead": True}
            if tokens.get(stream):
                kw["nextToken"] = tokens[stream]
            r = self.logs.get_log_events(**kw)
            events = r.get("events", [])
            for ev in events:
                lines.extend(event_lines(str(ev.get("message", ""))))
            nxt = r.get("nextForwardToken")
            if nxt:
                tokens[stream] = nxt
            if not events or not nxt or nxt == kw.get("nextToken"):
                break
