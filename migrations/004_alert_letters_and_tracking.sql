-- One email per tutor and run (a "letter" listing several sessions), and open/click
-- tracking of those emails. Never touches schema platform.

-- The Message-ID of the email that carried (or is carrying) this delivery, set when a
-- run claims the row: every row of one letter holds the same value, so a run that
-- stopped mid-send is settled letter by letter (the outbox file is named after it).
ALTER TABLE fsp.alert_deliveries ADD COLUMN letter_message_id text;
CREATE INDEX alert_deliveries_letter ON fsp.alert_deliveries (letter_message_id)
    WHERE letter_message_id IS NOT NULL;

-- Open and click tracking: an unguessable random token per delivery (the only thing
-- a tracking URL carries), the first open and click, and where the click leads.
ALTER TABLE fsp.alert_deliveries
    ADD COLUMN tracking_token   text UNIQUE,
    ADD COLUMN first_opened_at  timestamptz,
    ADD COLUMN first_clicked_at timestamptz,
    ADD COLUMN click_target     text;

-- Rows taken on before this migration get a token too (two random UUIDs: 244 random
-- bits from PostgreSQL's strong random source).
UPDATE fsp.alert_deliveries
SET tracking_token = replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')
WHERE tracking_token IS NULL AND status <> 'holdout';
