-- Idempotency keys of create calls, per owner (see crate::idempotency).
--
-- A row is live until `expires_at`: the lease while the first request runs (`response`
-- NULL), the retention once it completed. An expired row counts as absent and is taken
-- over by the next claim; the relay's maintenance deletes expired rows in the background.
-- `claim_token` tells a claim whether its own upsert took the key.

CREATE TABLE idempotency_keys (
    tenant_id   text        NOT NULL,
    owner_id    text        NOT NULL,
    key         text        NOT NULL,
    fingerprint bytea       NOT NULL,
    response    bytea,
    claim_token uuid        NOT NULL,
    lease_expires_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, owner_id, key)
);

CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
