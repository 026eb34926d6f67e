-- The API's side of uploads: key sets and jobs that have been announced (an id and a presigned
-- upload were handed out) but whose upload has not been confirmed yet. A key set moves to
-- `key_sets` when its bundle is verified (`complete`); a job moves to `jobs` when its batch
-- header is verified (`submit`), under the same id.
CREATE TABLE pending_uploads (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind               text NOT NULL CHECK (kind IN ('key_set', 'job')),
    model              text NOT NULL CHECK (length(model) >= 1),
    packing            text NOT NULL CHECK (length(packing) >= 1),
    params_fingerprint text NOT NULL CHECK (length(params_fingerprint) BETWEEN 1 AND 200),
    -- Jobs only: the key set, the batch size and the queue priority.
    key_set_id         uuid REFERENCES key_sets (id) ON DELETE CASCADE,
    image_count        integer CHECK (image_count >= 1),
    priority           smallint NOT NULL DEFAULT 0,
    idempotency_key    text CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    object_key         text NOT NULL CHECK (length(object_key) >= 1),
    size_bytes         bigint NOT NULL CHECK (size_bytes >= 1),
    -- The store's multipart upload id, when the upload was presigned in parts.
    upload_id          text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (kind = 'key_set' OR (key_set_id IS NOT NULL AND image_count IS NOT NULL))
);
CREATE UNIQUE INDEX pending_uploads_idempotency ON pending_uploads (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX pending_uploads_tenant ON pending_uploads (tenant_id, created_at);

-- Which model and packing a key set was registered for (NULL for key sets registered directly
-- through the queue crate).
ALTER TABLE key_sets ADD COLUMN model text, ADD COLUMN packing text;
-- Listing a tenant's jobs newest first by submission order (keyset pagination on seq).
CREATE INDEX jobs_tenant_seq ON jobs (tenant_id, seq DESC);
