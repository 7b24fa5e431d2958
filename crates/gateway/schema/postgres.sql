-- The signer gateway's request queue, PostgreSQL. Times are Unix milliseconds.
-- The web application inserts rows (request_id, kind, body) and reads the
-- result columns once state is done, refused or parked; the gateway owns
-- every other column. docs/gateway.md describes each column and state.
CREATE TABLE IF NOT EXISTS signer_requests (
    request_id     TEXT PRIMARY KEY
                   CHECK (length(request_id) BETWEEN 1 AND 128),
    kind           TEXT NOT NULL
                   CHECK (kind IN ('sign_x509', 'revoke_x509', 'certify_openpgp')),
    body           TEXT NOT NULL,
    state          TEXT NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'claimed', 'done', 'refused', 'parked')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    created_ms     BIGINT NOT NULL
                   DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT,
    not_before_ms  BIGINT NOT NULL DEFAULT 0,
    claimed_by     TEXT,
    lease_until_ms BIGINT,
    finished_ms    BIGINT,
    last_error     TEXT,
    sent_to        TEXT,
    status_code    INTEGER,
    status_name    TEXT,
    message        TEXT,
    detail         TEXT,
    signer         TEXT,
    serial         TEXT,
    certificate    TEXT,
    result         TEXT
);
-- Claims walk this index oldest first within a state and stop at their
-- limit, however many rows wait; it also counts rows by state.
CREATE INDEX IF NOT EXISTS signer_requests_queue
    ON signer_requests (state, created_ms, request_id);
-- (Replaced by signer_requests_queue, which orders without sorting.)
DROP INDEX IF EXISTS signer_requests_due;

-- New rows wake the gateways at once. They poll as well, so a lost
-- notification, or a parked row set back to pending, waits one poll interval.
CREATE OR REPLACE FUNCTION signer_requests_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('signer_requests', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS signer_requests_notify ON signer_requests;
CREATE TRIGGER signer_requests_notify
    AFTER INSERT ON signer_requests
    FOR EACH STATEMENT EXECUTE FUNCTION signer_requests_notify();
