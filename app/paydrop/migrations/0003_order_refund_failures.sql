-- A refund Stripe could not complete (the card was closed, the bank refused)
-- is recorded on the order and flags it for support; the buyer was not paid back.
ALTER TABLE orders
    ADD COLUMN refund_failed_at      timestamptz,
    ADD COLUMN refund_failure_reason text;
