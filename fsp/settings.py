"""The one settings object: read from the environment, frozen, built on demand.

Nothing here connects to anything; `get_settings()` only reads variables.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Configuration of every role (the environment variables in README.md, "Configuration"). Unset services fall back to
    embedded ones kept under `state_dir`."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    mlflow_tracking_uri: str | None = Field(default=None, alias="MLFLOW_TRACKING_URI")
    state_dir: Path = Field(default=PROJECT_ROOT / ".fsp", alias="FSP_STATE_DIR")

    model_name: str = Field(default="first-session-risk", alias="FSP_MODEL_NAME")
    experiment_name: str = Field(default="first-session-risk", alias="FSP_EXPERIMENT")
    holdout_days: int = Field(default=28, ge=1, alias="FSP_HOLDOUT_DAYS")
    cv_folds: int = Field(default=5, ge=2, alias="FSP_CV_FOLDS")
    min_training_sessions: int = Field(default=200, ge=10, alias="FSP_MIN_TRAINING_SESSIONS")
    min_holdout_sessions: int = Field(default=50, ge=10, alias="FSP_MIN_HOLDOUT_SESSIONS")
    promotion_margin: float = Field(default=0.005, ge=0, alias="FSP_PROMOTION_MARGIN")
    tie_tolerance: float = Field(default=0.005, ge=0, alias="FSP_TIE_TOLERANCE")
    random_seed: int = Field(default=42, alias="FSP_SEED")

    smtp_host: str | None = Field(default=None, alias="SMTP_HOST")
    smtp_port: int = Field(default=25, alias="SMTP_PORT")
    smtp_user: str | None = Field(default=None, alias="SMTP_USER")
    smtp_password: SecretStr | None = Field(default=None, alias="SMTP_PASSWORD")
    smtp_use_tls: bool = Field(default=False, alias="SMTP_USE_TLS")
    smtp_from_email: str = Field(default="risk-alerts@tutoring.example", alias="SMTP_FROM_EMAIL")
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, alias="SMTP_TIMEOUT")

    alert_holdout_share: float = Field(default=0.10, ge=0, le=1, alias="FSP_ALERT_HOLDOUT_SHARE")
    alert_max_attempts: int = Field(default=5, ge=1, alias="FSP_ALERT_MAX_ATTEMPTS")
    alert_backoff_seconds: float = Field(default=60.0, ge=0, alias="FSP_ALERT_BACKOFF_SECONDS")
    alert_send_lease_seconds: float = Field(
        default=300.0, ge=0, alias="FSP_ALERT_SEND_LEASE_SECONDS"
    )
    # Open and click tracking of the alert emails. Off unless asked for: a tutor's
    # reading is personal data, and the links only work where the Bento answers at
    # FSP_PUBLIC_BASE_URL (the demo turns it on: its Bento runs on this machine).
    track_opens: bool = Field(default=False, alias="FSP_TRACK_OPENS")
    public_base_url: str = Field(default="http://127.0.0.1:3000", alias="FSP_PUBLIC_BASE_URL")
    platform_url: str = Field(default="https://tutoring.example/", alias="FSP_PLATFORM_URL")
    """The tutoring platform's web address: where an unknown tracking link leads."""
    session_url_template: str = Field(
        default="https://tutoring.example/sessions/{session_id}", alias="FSP_SESSION_URL"
    )
    """The platform's page of a session (`{session_id}` is replaced): the email's link."""

    monitor_auc_floor: float = Field(default=0.60, ge=0, le=1, alias="FSP_AUC_FLOOR")
    monitor_drift_share: float = Field(default=0.20, ge=0, le=1, alias="FSP_DRIFT_SHARE")
    monitor_auc_drop_tolerance: float = Field(
        default=0.02, ge=0, le=1, alias="FSP_AUC_DROP_TOLERANCE"
    )
    monitor_bootstrap_resamples: int = Field(
        default=1000, ge=100, le=100_000, alias="FSP_BOOTSTRAP_RESAMPLES"
    )
    monitor_min_labelled: int = Field(default=50, ge=1, alias="FSP_MONITOR_MIN_LABELLED")
    demo_tutors: int = Field(default=1000, ge=50, le=100_000, alias="FSP_DEMO_TUTORS")
    monitor_min_drift_rows: int = Field(default=200, ge=1, alias="FSP_MONITOR_MIN_DRIFT_ROWS")

    # The predict API's access (README.md, "Access"): one or more keys,
    # comma-separated, each accepted as `Authorization: Bearer <key>`. Unset: no key
    # is asked for (a laptop on loopback). A secret: never printed, logged or echoed.
    api_key: SecretStr | None = Field(default=None, alias="FSP_API_KEY")
    api_public_metrics: bool = Field(default=False, alias="FSP_API_PUBLIC_METRICS")
    api_public_docs: bool = Field(default=False, alias="FSP_API_PUBLIC_DOCS")

    @property
    def api_keys(self) -> tuple[bytes, ...]:
        """The accepted API keys (FSP_API_KEY split at commas, blanks dropped), as bytes
        for a constant-time comparison; empty when no key is set."""
        if self.api_key is None:
            return ()
        keys = (k.strip() for k in self.api_key.get_secret_value().split(","))
        return tuple(k.encode() for k in keys if k)

    @property
    def pg_dir(self) -> Path:
        """Where the embedded PostgreSQL keeps its data."""
        return self.state_dir / "pg"

    @property
    def outbox_dir(self) -> Path:
        """Where emails go as .eml files when no SMTP relay is configured."""
        return self.state_dir / "outbox"

    @property
    def reports_dir(self) -> Path:
        """Where the monitoring flow writes its Evidently reports (HTML + JSON)."""
        return self.state_dir / "reports"

    @property
    def resolved_mlflow_uri(self) -> str:
        """The MLflow store: the configured one, else SQLite under the state folder."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.state_dir / 'mlflow.db'}"

    @property
    def mlflow_artifact_location(self) -> str | None:
        """Where a new experiment keeps artifacts: under the state folder for a local
        (SQLite/file) store, the server's own default for a tracking server."""
        uri = self.resolved_mlflow_uri
        if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
            return (self.state_dir / "mlartifacts").as_uri()
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
