-- Copied verbatim from the shared contract (contract/platform.sql): created only by
-- `fsp demo-data` and the tests, for databases that lack the platform schema.

-- The tutoring platform's operational tables: the data the first-session
-- risk system READS. The platform (booking, classroom, feedback services)
-- writes them; the system never writes here, except its own demo-data
-- generator when it fills an empty database.
--
-- They live in the schema `platform`. The system keeps its own tables in
-- another schema (see README.md beside this file).
--
-- Every timestamp is timestamptz. Time-of-day features are taken in the
-- student's local time zone (students.timezone).

CREATE SCHEMA IF NOT EXISTS platform;

CREATE TABLE IF NOT EXISTS platform.tutors (
    tutor_id      text PRIMARY KEY,
    name          text        NOT NULL,
    email         text        NOT NULL,
    onboarded_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS platform.students (
    student_id  text PRIMARY KEY,
    name        text        NOT NULL,
    birth_date  date        NOT NULL,
    timezone    text        NOT NULL DEFAULT 'America/New_York'  -- IANA name
);

-- One row per booked session. A session is created as 'scheduled'; after its
-- start the platform moves it to one of the final states. 'rescheduled' and
-- 'no_show' are always attributed to the TUTOR (the tutor moved the session,
-- or did not turn up); 'cancelled' is a student cancellation.
CREATE TABLE IF NOT EXISTS platform.sessions (
    session_id        text PRIMARY KEY,
    tutor_id          text        NOT NULL REFERENCES platform.tutors,
    student_id        text        NOT NULL REFERENCES platform.students,
    subject           text        NOT NULL,
    scheduled_start   timestamptz NOT NULL,
    duration_minutes  integer     NOT NULL CHECK (duration_minutes > 0),
    status            text        NOT NULL
        CHECK (status IN ('scheduled', 'completed', 'cancelled', 'rescheduled', 'no_show')),
    is_first_session  boolean     NOT NULL,  -- first session of this student with this tutor
    created_at        timestamptz NOT NULL   -- when it was booked
);
CREATE INDEX IF NOT EXISTS sessions_tutor_start ON platform.sessions (tutor_id, scheduled_start);
CREATE INDEX IF NOT EXISTS sessions_start ON platform.sessions (scheduled_start);

-- The student's rating of a completed session, 1 (worst) to 5 (best).
-- A first session rated below 3 stars is a POOR first session: the event the
-- system predicts. Not every completed session gets a rating.
CREATE TABLE IF NOT EXISTS platform.feedback (
    session_id    text PRIMARY KEY REFERENCES platform.sessions,
    rating        smallint    NOT NULL CHECK (rating BETWEEN 1 AND 5),
    submitted_at  timestamptz NOT NULL
);

-- The platform's engagement score for each tutor (logins, message response
-- time, profile upkeep), recomputed from time to time; a history, not a
-- current value: the score in force at time t is the row with the latest
-- as_of <= t.
CREATE TABLE IF NOT EXISTS platform.tutor_engagement (
    tutor_id  text        NOT NULL REFERENCES platform.tutors,
    as_of     timestamptz NOT NULL,
    score     real        NOT NULL CHECK (score BETWEEN 0 AND 1),
    PRIMARY KEY (tutor_id, as_of)
);
