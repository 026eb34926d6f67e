-- Least privilege: the group roles the API and the workers log in through, and exactly the
-- rights each needs. The role that runs the migrations owns every table (and alone may change
-- the schema); operators create LOGIN users in these groups for the processes (infra/README.md,
-- "Database roles"):
--
--   CREATE ROLE blindfold_api_login LOGIN PASSWORD '…' IN ROLE blindfold_api;
--   CREATE ROLE blindfold_worker_login LOGIN PASSWORD '…' IN ROLE blindfold_worker;
--
-- Roles are cluster-wide while grants are per database, so the roles are created only when
-- missing (and a concurrent migration of another database creating them too is not an error),
-- and the grants below are made in every database this migration runs in.
--
-- Not granted anywhere: sequence rights (the identity columns `jobs.seq` and `job_events.id`
-- need none for an INSERT), UPDATE or DELETE on `job_events` (append-only; rows go with their
-- job through the foreign key's cascade, which runs with the owner's rights), and CREATE on
-- anything.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'blindfold_api') THEN
        BEGIN
            CREATE ROLE blindfold_api NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            -- Created by a migration of another database in the same cluster meanwhile.
            NULL;
        END;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'blindfold_worker') THEN
        BEGIN
            CREATE ROLE blindfold_worker NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;

-- Both check at start that the schema is the one they were built for. (sqlx creates the table
-- before it applies the first migration; a database migrated by other means has none.)
DO $$
BEGIN
    IF to_regclass('_sqlx_migrations') IS NOT NULL THEN
        GRANT SELECT ON _sqlx_migrations TO blindfold_api, blindfold_worker;
    END IF;
END
$$;

-- The API: tenants, tokens, key sets, announced uploads, the model registry, and the queue's
-- client side (enqueue, read, list, cancel) plus every housekeeping duty (settling expired
-- leases, expiring announced uploads, retention).
GRANT SELECT, INSERT ON tenants TO blindfold_api;
GRANT SELECT, INSERT, UPDATE ON api_tokens TO blindfold_api;
GRANT SELECT, INSERT, DELETE ON key_sets TO blindfold_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON pending_uploads TO blindfold_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON models TO blindfold_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON jobs TO blindfold_api;
GRANT SELECT, INSERT ON job_events TO blindfold_api;

-- The workers: the queue's worker side (claim, heartbeat, complete, fail, release) and its
-- housekeeping duties (settling expired leases, retention of finished jobs), reading the key
-- set and the model version a job names. Claiming reads tenant ids only (fairness), never
-- names; a job's own columns (tenant, model, input, key set) cannot be changed, only its
-- progress through the state machine. Nothing on `api_tokens` or `pending_uploads`.
GRANT SELECT (id) ON tenants TO blindfold_worker;
GRANT SELECT ON key_sets TO blindfold_worker;
GRANT SELECT ON models TO blindfold_worker;
GRANT SELECT, DELETE ON jobs TO blindfold_worker;
GRANT UPDATE (state, attempt, worker_id, lease_expires_at, started_at, finished_at, run_at, progress, stage,
              cancel_requested, result_key, error_code, error_message)
    ON jobs TO blindfold_worker;
GRANT INSERT ON job_events TO blindfold_worker;
