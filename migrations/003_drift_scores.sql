-- Per-feature drift scores of every monitoring run: what moved, by how much, and
-- in which form it was compared (growth counts as shares of the base count).
CREATE TABLE IF NOT EXISTS fsp.drift_scores (
    model_version     text        NOT NULL,
    evaluation_date   timestamptz NOT NULL,
    time_window_days  integer     NOT NULL,
    feature           text        NOT NULL,
    method            text,
    score             double precision,
    threshold         double precision,
    drifted           boolean     NOT NULL,
    compared_as       text,
    PRIMARY KEY (model_version, evaluation_date, time_window_days, feature)
);
