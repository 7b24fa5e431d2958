-- The signer gateway's request queue, SQLite. Times are Unix milliseconds.
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
    created_ms     INTEGER NOT NULL
                   DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    not_before_ms  INTEGER NOT NULL DEFAULT 0,
    claimed_by     TEXT,
    lease_until_ms INTEGER,
    finished_ms    INTEGER,
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
