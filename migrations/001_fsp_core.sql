-- The system's own state (contract section 2). Never touches schema platform.
CREATE TABLE fsp.first_session_predictions (
    prediction_id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id           text        NOT NULL UNIQUE,
    tutor_id             text        NOT NULL,
    student_id           text,
    scheduled_start      timestamptz,
    subject              text,
    prediction_date      timestamptz NOT NULL,
    risk_probability     double precision NOT NULL CHECK (risk_probability BETWEEN 0 AND 1),
    risk_score           smallint    NOT NULL CHECK (risk_score BETWEEN 0 AND 100),
    risk_level           text        NOT NULL CHECK (risk_level IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')),
    risk_prediction      smallint    NOT NULL CHECK (risk_prediction IN (0, 1)),
    alert_threshold      double precision,
    model_version        text        NOT NULL,
    top_risk_factors     jsonb       NOT NULL DEFAULT '[]'::jsonb,
    features             jsonb,
    alert_sent           boolean     NOT NULL DEFAULT false,
    alert_sent_at        timestamptz,
    actual_rating        smallint,
    actual_poor_session  boolean,
    prediction_correct   boolean,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX first_session_predictions_tutor ON fsp.first_session_predictions (tutor_id, prediction_date);
CREATE INDEX first_session_predictions_date ON fsp.first_session_predictions (prediction_date);

CREATE TABLE fsp.model_performance_logs (
    log_id            bigserial PRIMARY KEY,
    model_type        text        NOT NULL,
    model_version     text        NOT NULL,
    evaluation_date   timestamptz NOT NULL,
    accuracy          double precision,
    precision         double precision,
    recall            double precision,
    f1_score          double precision,
    auc_roc           double precision,
    sample_size       integer     NOT NULL,
    time_window_days  integer     NOT NULL,
    metrics_detail    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_version, evaluation_date, time_window_days)
);
