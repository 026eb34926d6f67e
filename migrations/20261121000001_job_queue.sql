-- The service database: tenants and their API tokens, key sets, jobs and the jobs' audit trail.
-- The job state machine is documented in crates/queue/README.md; the CHECK constraints below
-- enforce the parts of it that a single row can show.

-- A hospital.
CREATE TABLE tenants (
    id         uuid PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- API tokens: only the SHA-256 of the (high-entropy, random) token is stored.
CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    token_sha256 bytea NOT NULL UNIQUE CHECK (octet_length(token_sha256) = 32),
    label        text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    CHECK (revoked_at IS NULL OR revoked_at >= created_at)
);
CREATE INDEX api_tokens_tenant ON api_tokens (tenant_id);

-- A tenant's public evaluation keys (relinearisation, rotation), stored as an object.
CREATE TABLE key_sets (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    params_fingerprint text NOT NULL CHECK (length(params_fingerprint) BETWEEN 1 AND 200),
    object_key         text NOT NULL CHECK (length(object_key) >= 1),
    size_bytes         bigint NOT NULL CHECK (size_bytes >= 0),
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX key_sets_tenant ON key_sets (tenant_id, created_at);

-- One inference job over one batch of ciphertexts.
--
-- States: queued (waiting, possibly for a retry: run_at in the future), running (leased to
-- worker_id until lease_expires_at, attempt = the attempt being run), and the final states
-- succeeded, failed, cancelled.
CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    -- Submission order: the tie-breaker for "oldest first" (created_at is shared by a batch).
    seq              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    idempotency_key  text CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    model            text NOT NULL CHECK (length(model) >= 1),
    packing          text NOT NULL CHECK (length(packing) >= 1),
    key_set_id       uuid REFERENCES key_sets (id) ON DELETE SET NULL,
    image_count      integer NOT NULL CHECK (image_count >= 0),
    priority         smallint NOT NULL DEFAULT 0,
    input_key        text NOT NULL CHECK (length(input_key) >= 1),
    result_key       text,
    state            text NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    progress         real NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
    stage            text,
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     integer NOT NULL CHECK (max_attempts >= 1),
    run_at           timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz,
    worker_id        text,
    cancel_requested boolean NOT NULL DEFAULT false,
    error_code       text,
    error_message    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,

    -- Final iff finished.
    CONSTRAINT jobs_finished_iff_final
        CHECK ((state IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL)),
    -- A lease exists iff the job is running, and a running job has a worker and an attempt.
    CONSTRAINT jobs_lease_iff_running
        CHECK ((state = 'running') = (lease_expires_at IS NOT NULL)),
    CONSTRAINT jobs_running_has_worker
        CHECK (state <> 'running' OR (worker_id IS NOT NULL AND attempt >= 1 AND started_at IS NOT NULL)),
    CONSTRAINT jobs_attempts_bounded CHECK (attempt <= max_attempts),
    -- Only a running job can carry a pending cancel request.
    CONSTRAINT jobs_cancel_request_only_running CHECK (NOT cancel_requested OR state = 'running'),
    -- Succeeded jobs have a result and no error; failed jobs say why.
    CONSTRAINT jobs_succeeded_has_result
        CHECK (state <> 'succeeded' OR (result_key IS NOT NULL AND error_code IS NULL)),
    CONSTRAINT jobs_failed_has_error CHECK (state <> 'failed' OR error_code IS NOT NULL)
);

-- Idempotent enqueue: one job per (tenant, idempotency key).
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The claim query: per tenant, ready jobs by priority then age.
CREATE INDEX jobs_queued ON jobs (tenant_id, priority DESC, seq)
    WHERE state = 'queued';
-- The claim query: running jobs per tenant (fairness) and expired leases (rescue).
CREATE INDEX jobs_running_tenant ON jobs (tenant_id) WHERE state = 'running';
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE state = 'running';
-- Listing a tenant's jobs, newest first.
CREATE INDEX jobs_tenant_created ON jobs (tenant_id, created_at DESC);
-- Retention: finished jobs by age.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

-- The append-only audit trail: one row per state change (and per cancel request), with why.
CREATE TABLE job_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    from_state text CHECK (from_state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    to_state   text NOT NULL CHECK (to_state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempt    integer NOT NULL,
    worker_id  text,
    reason     text NOT NULL,
    detail     text
);
CREATE INDEX job_events_job ON job_events (job_id, id);

-- Append-only: rows are never changed (deleting them with their job is retention).
CREATE FUNCTION job_events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'job_events is append-only';
END
$$;
CREATE TRIGGER job_events_append_only BEFORE UPDATE ON job_events
    FOR EACH ROW EXECUTE FUNCTION job_events_are_append_only();
