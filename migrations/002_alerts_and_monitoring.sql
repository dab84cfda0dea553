-- The operating loop's state: alert delivery (exactly once), the holdout arm, and the
-- index of monitoring reports. Never touches schema platform.

-- Holdout arm: a high-risk session deliberately left without an email, so that
-- alerts do not corrupt future training labels and their effect can be measured.
ALTER TABLE fsp.first_session_predictions
    ADD COLUMN alert_holdout boolean NOT NULL DEFAULT false;

-- One row per high-risk session the alerts flow has taken on (alert or holdout).
-- status: holdout   - in the holdout arm, no email, final
--         pending   - waiting for (another) delivery attempt at next_attempt_at
--         sending   - claimed by a run that is delivering it right now (claimed_at)
--         sent      - delivered (the relay accepted it / the .eml file exists), final
--         failed    - given up after max attempts, or delivery uncertain after a crash, final
--         cancelled - the session started or stopped qualifying before delivery, final
CREATE TABLE fsp.alert_deliveries (
    session_id        text        PRIMARY KEY
        REFERENCES fsp.first_session_predictions (session_id) ON DELETE CASCADE,
    tutor_id          text        NOT NULL,
    recipient         text,
    message_id        text        NOT NULL UNIQUE,
    status            text        NOT NULL
        CHECK (status IN ('holdout', 'pending', 'sending', 'sent', 'failed', 'cancelled')),
    attempts          integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error        text,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    claimed_at        timestamptz,
    sent_at           timestamptz,
    risk_probability  double precision NOT NULL,
    alert_threshold   double precision NOT NULL,
    model_version     text        NOT NULL,
    enqueued_for      timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_deliveries_due ON fsp.alert_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX alert_deliveries_status ON fsp.alert_deliveries (status);

-- Every Evidently report the monitoring flow wrote, so any decision can be traced.
CREATE TABLE fsp.monitoring_reports (
    report_id          bigserial   PRIMARY KEY,
    kind               text        NOT NULL CHECK (kind IN ('data_drift', 'classification')),
    model_version      text        NOT NULL,
    evaluation_date    timestamptz NOT NULL,
    time_window_days   integer     NOT NULL,
    html_path          text        NOT NULL,
    json_path          text        NOT NULL,
    mlflow_run_id      text,
    reference_rows     integer     NOT NULL,
    current_rows       integer     NOT NULL,
    summary            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, model_version, evaluation_date, time_window_days)
);
