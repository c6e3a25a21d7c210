-- The shop: catalog, accounts, orders, download grants and processed Stripe events.
-- Amounts are integers in the currency's minor unit (cents); currencies are
-- lower-case ISO 4217 codes, as Stripe writes them.

CREATE TABLE products (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug               text NOT NULL UNIQUE
                       CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$' AND length(slug) <= 80),
    title              text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    description        text NOT NULL DEFAULT '',
    price_amount       integer NOT NULL CHECK (price_amount > 0),
    currency           text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    -- The asset lives in the storage backend under asset_key, never under a public URL.
    asset_key          text NOT NULL CHECK (asset_key <> ''),
    asset_filename     text NOT NULL CHECK (asset_filename <> ''),
    asset_content_type text NOT NULL DEFAULT 'application/octet-stream',
    asset_size         bigint NOT NULL CHECK (asset_size >= 0),
    active             boolean NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email             text NOT NULL UNIQUE CHECK (email = lower(email) AND email LIKE '%_@_%'),
    password_hash     text NOT NULL,
    -- Guest orders attach to an account only once its owner proved the address.
    email_verified_at timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id                         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id                    bigint REFERENCES users (id),
    email                      text NOT NULL CHECK (email = lower(email)),
    product_id                 bigint NOT NULL REFERENCES products (id),
    -- Copied from the product when the order is created: the price paid.
    amount                     integer NOT NULL CHECK (amount > 0),
    currency                   text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    -- pending -> paid -> refunded | disputed; pending -> failed (-> paid if the
    -- same payment later succeeds). refunded and disputed are final.
    status                     text NOT NULL DEFAULT 'pending'
                               CHECK (status IN ('pending', 'paid', 'failed', 'refunded', 'disputed')),
    checkout_mode              text NOT NULL CHECK (checkout_mode IN ('payment_intent', 'checkout_session')),
    stripe_setup_intent_id     text UNIQUE,
    stripe_payment_intent_id   text UNIQUE,
    stripe_checkout_session_id text UNIQUE,
    stripe_charge_id           text,
    failure_message            text,
    amount_refunded            integer NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0),
    -- Set by a dispute: someone should look at this order.
    flagged                    boolean NOT NULL DEFAULT false,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    paid_at                    timestamptz,
    revoked_at                 timestamptz
);
CREATE INDEX orders_user_id_idx ON orders (user_id, created_at DESC);
CREATE INDEX orders_guest_email_idx ON orders (email) WHERE user_id IS NULL;

-- A download link: the token in the URL is this row's id, signed with
-- SECRET_KEY; the row holds the expiry, the limit and the counter.
CREATE TABLE download_grants (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id       uuid NOT NULL REFERENCES orders (id),
    expires_at     timestamptz NOT NULL,
    max_downloads  integer NOT NULL CHECK (max_downloads > 0),
    download_count integer NOT NULL DEFAULT 0 CHECK (download_count >= 0),
    revoked_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (download_count <= max_downloads)
);
CREATE INDEX download_grants_order_id_idx ON download_grants (order_id);

-- Each Stripe event id is recorded once, in the same transaction as the state
-- change it causes: a duplicate delivery finds its row and changes nothing.
-- payment_intent_id says which payment an event was about. An event about a
-- payment no order knows yet is "parked" (processed_at NULL, payload kept) and
-- replayed when an order learns that payment intent.
CREATE TABLE stripe_events (
    id                text PRIMARY KEY,
    type              text NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    processed_at      timestamptz,
    payment_intent_id text,
    payload           jsonb
);
CREATE INDEX stripe_events_parked_idx ON stripe_events (payment_intent_id)
    WHERE processed_at IS NULL;
