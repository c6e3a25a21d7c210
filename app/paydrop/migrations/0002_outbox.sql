-- Outgoing mail, written in the same transaction as the state change it
-- announces (a receipt with the payment, a confirmation link with the account),
-- and delivered by `paydrop worker` with retries: a message is never lost to
-- an SMTP outage and never sent for a change that rolled back.
-- pending -> sent | skipped (SMTP_HOST empty) | dead (gave up after MAIL_MAX_ATTEMPTS).
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient       text NOT NULL,
    subject         text NOT NULL,
    -- Bodies carry bearer links (downloads, resets): emptied once handled.
    body            text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sent', 'skipped', 'dead')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- Also the lease: a worker that claims a message pushes this forward first.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX outbox_due_idx ON outbox (next_attempt_at) WHERE status = 'pending';
