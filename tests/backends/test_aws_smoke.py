"""scripts/aws_smoke.py (make aws-smoke) refuses to start without AWS credentials."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "aws_smoke.py"


def test_refuses_without_credentials(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--bucket", "b", "--role", "arn:aws:iam::1:role/r",
                           "--region", "us-east-1"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "no AWS credentials" in proc.stderr and proc.stdout == ""
