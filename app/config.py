"""Settings: one class, env prefix LLMTUNER_, nested groups with `__`."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "dev-insecure-jwt-secret-change-me"


class JWTSettings(BaseModel):
    secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    algorithm: Literal["HS256", "HS384", "HS512", "RS256"] = "HS256"
    # For RS256: PEM keys (the public key verifies, the private key signs).
    private_key: SecretStr | None = None
    public_key: str | None = None
    issuer: str = "llmtuner"
    audience: str = "llmtuner-api"
    lifetime_seconds: int = Field(3600, ge=60, le=7 * 24 * 3600)


class AuthSettings(BaseModel):
    min_password_length: int = Field(10, ge=8)
    # argon2id at OWASP's recommended minimum (m=19 MiB, t=2, p=1): ~25 ms a hash here,
    # against several times that for the library's defaults; logins are also rate-limited.
    argon2_time_cost: int = Field(2, ge=1)
    argon2_memory_kib: int = Field(19456, ge=8192)
    argon2_parallelism: int = Field(1, ge=1)
    # Failed logins from one client address for one username before each further attempt from that
    # address must wait (1 s, then doubling; app/auth/ratelimit.py). The account is never locked.
    max_failed_logins: int = 5
    failed_login_window_seconds: int = 300
    # Logins in flight across the process; more wait in line (CPU guard).
    max_concurrent_logins: int = 2


# The default role ARN names no real account: moto accepts it, AWS does not (the SageMaker backend
# refuses to start with it outside development unless an emulator's endpoint URL is set).
PLACEHOLDER_ROLE_ARN = "arn:aws:iam::000000000000:role/LLMTunerSageMakerExecution"


class AWSSettings(BaseModel):
    region: str = "us-east-1"
    s3_bucket: str = "llmtuner-artifacts"
    role_arn: str = PLACEHOLDER_ROLE_ARN
    endpoint_url: str | None = None
    kms_key_id: str | None = None
    vpc_subnet_ids: list[str] = []
    vpc_security_group_ids: list[str] = []
    max_runtime_seconds: int = Field(24 * 3600, ge=60)
    use_spot: bool = False
    max_wait_seconds: int = Field(36 * 3600, ge=60)
    training_image_uri: str | None = None
    inference_image_uri: str | None = None
    # A Hugging Face token for gated base models, or the ARN of a Secrets Manager secret holding
    # it; the training, evaluation and endpoint containers get it as HF_TOKEN.
    hf_token: SecretStr | None = None
    # The most new tokens one invocation may ask for: a real-time endpoint must answer within 60 s.
    max_invoke_new_tokens: int = Field(1024, ge=1)


class WorkerSettings(BaseModel):
    enabled: bool = True
    poll_interval_seconds: float = Field(2.0, gt=0)
    max_concurrent_local_jobs: int = Field(1, ge=1)
    max_concurrent_local_endpoints: int = Field(2, ge=1)
    # A worker renews its leases every pass; one that stops lets its jobs go after this long.
    lease_seconds: float = Field(60.0, ge=1)


class LimitsSettings(BaseModel):
    """Fair use of shared capacity, per user and per training job (the `max_steps` bound itself is
    the hyperparameter contract's, training_scripts/config.py)."""

    # Training jobs one user may have queued or running at once (more: 429 too_many_jobs).
    max_active_jobs_per_user: int = Field(10, ge=1)
    # Training tokens one job may process (examples' tokens x epochs, or x max_steps' batches).
    max_job_tokens: int = Field(100_000_000, ge=1)
    # Wall time of one job: refused when the estimate exceeds it, stopped when a run does.
    max_job_seconds: int = Field(24 * 3600, ge=60)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLMTUNER_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    env: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path("./data")
    database_url: str | None = None
    backend: Literal["local", "sagemaker"] = "local"
    storage: Literal["local", "s3"] = "local"
    public_base_url: str = "http://127.0.0.1:8000"
    cors_origins: list[str] = ["http://localhost:3000", "http://127.0.0.1:3000"]
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1)
    max_request_body_bytes: int = Field(1024 * 1024, ge=1024)
    # Processes that validate one large JSONL upload (None: one per CPU; 1: the request's thread
    # only), and the size from which they are used (below it, starting them costs more than it saves).
    dataset_workers: int | None = Field(None, ge=1)
    dataset_parallel_min_bytes: int = Field(32 * 1024 * 1024, ge=0)
    # Extra catalogue entries: {"id": ..., "source": "hub id | /local/dir | s3://prefix", ...}
    extra_base_models: list[dict[str, object]] = []
    # Overrides of the packaged price table: {"ml.g5.xlarge": {"training": 1.21, "inference": 1.21}}
    instance_prices: dict[str, dict[str, float]] = {}
    default_monthly_budget: float | None = None
    invoke_timeout_seconds: float = Field(120.0, gt=0)
    endpoint_start_timeout_seconds: float = Field(300.0, gt=0)
    jwt: JWTSettings = JWTSettings()
    auth: AuthSettings = AuthSettings()
    aws: AWSSettings = AWSSettings()
    worker: WorkerSettings = WorkerSettings()
    limits: LimitsSettings = LimitsSettings()

    @model_validator(mode="after")
    def _refuse_dev_secret(self) -> Settings:
        # The built-in secret is in the source: anyone could forge tokens and download links with it.
        # Development replaces it with a generated one kept under the data dir (app/security.py);
        # every other env (test included, so a test config cannot leak into a deployment) needs its own.
        if self.env != "development" and self.jwt.algorithm.startswith("HS"):
            if self.jwt.secret.get_secret_value() == DEV_JWT_SECRET:
                raise ValueError(
                    f"LLMTUNER_JWT__SECRET is unset (the built-in development secret); set a random secret of "
                    f"at least 32 characters (e.g. `openssl rand -hex 32`) to run with LLMTUNER_ENV={self.env}, "
                    "or use LLMTUNER_ENV=development for a local run"
                )
            if len(self.jwt.secret.get_secret_value()) < 32:
                raise ValueError(f"LLMTUNER_JWT__SECRET must be at least 32 characters with LLMTUNER_ENV={self.env}")
        if self.jwt.algorithm == "RS256" and not (self.jwt.private_key and self.jwt.public_key):
            raise ValueError("LLMTUNER_JWT__ALGORITHM=RS256 needs LLMTUNER_JWT__PRIVATE_KEY and __PUBLIC_KEY")
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'llmtuner.db').resolve()}"

    @property
    def dataset_worker_count(self) -> int:
        if self.dataset_workers:
            return self.dataset_workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)

    @property
    def data_path(self) -> Path:
        return self.data_dir.resolve()


def get_settings() -> Settings:
    return Settings()
