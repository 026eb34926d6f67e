#!/usr/bin/env bash
# Runs the autoscaling query of each rendered ScaledObject (files written by validate.py
# --query-out) against a freshly migrated database holding a known set of jobs, and checks the
# count it returns: so a schema change cannot silently break autoscaling.
#
# The server: DATABASE_URL's when set; else the one on 127.0.0.1:5432 (user postgres); else a
# throwaway cluster started here with initdb/pg_ctl. The test database is dropped afterwards.
#
# Usage: keda-query.sh QUERY.sql...
set -euo pipefail
cd "$(dirname "$0")/../.."

[ $# -ge 1 ] || { echo "usage: $0 QUERY.sql..." >&2; exit 2; }
command -v psql >/dev/null || { echo "keda-query: psql not found (apt-get install postgresql-client)" >&2; exit 1; }

cluster_dir=""
db=""
admin_url=""
cleanup() {
  if [ -n "$db" ] && [ -n "$admin_url" ]; then
    psql "$admin_url" -q -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
  fi
  if [ -n "$cluster_dir" ]; then
    as_pg "$pg_bin/pg_ctl" -D "$cluster_dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$cluster_dir"
  fi
}
trap cleanup EXIT

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start_cluster() {
  pg_bin=$(dirname "$(command -v initdb 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n1)")
  [ -x "$pg_bin/initdb" ] || { echo "keda-query: no server reachable and no initdb to start one" >&2; exit 1; }
  cluster_dir=$(mktemp -d /tmp/blindfold-keda-query.XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres "$cluster_dir"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_pg "$pg_bin/initdb" -D "$cluster_dir/data" -U postgres --auth=trust >/dev/null
  as_pg "$pg_bin/pg_ctl" -D "$cluster_dir/data" -l "$cluster_dir/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $cluster_dir -c fsync=off" start >/dev/null
  admin_url="postgres://postgres@127.0.0.1:$port/postgres"
}

if [ -n "${DATABASE_URL:-}" ]; then
  admin_url=$DATABASE_URL
elif command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
  admin_url="postgres://postgres@127.0.0.1:5432/postgres"
else
  start_cluster
fi

db="blindfold_infra_check_$$"
# The same server, the test database instead of the URL's.
db_url=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$admin_url" "$db")
psql "$admin_url" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$db\"" >/dev/null

for migration in $(ls migrations/*.sql | sort); do
  psql "$db_url" -q -v ON_ERROR_STOP=1 --single-transaction -f "$migration" >/dev/null
done
echo "keda-query: migrated $(ls migrations/*.sql | wc -l) files into $db"

# count QUERYFILE -> the single value the query returns (KEDA reads one number).
count() {
  local rows
  rows=$(psql "$db_url" -X -q -t -A -v ON_ERROR_STOP=1 -f "$1")
  [ "$(printf '%s\n' "$rows" | wc -l)" = 1 ] || { echo "keda-query: $1 returned more than one row: $rows" >&2; exit 1; }
  printf '%s' "$rows"
}

expect() { # QUERYFILE EXPECTED WHAT
  local got
  got=$(count "$1")
  if [ "$got" != "$2" ]; then
    echo "keda-query: FAIL $(basename "$1"): $3: the query returned $got, expected $2" >&2
    exit 1
  fi
  echo "keda-query: $(basename "$1"): $3: $got"
}

psql_do() { psql "$db_url" -q -v ON_ERROR_STOP=1 -c "$1" >/dev/null; }

for query in "$@"; do
  expect "$query" 0 "empty queue (scale to zero)"
done

# Two tenants; jobs in every state. Running and finished rows satisfy the table's CHECKs.
psql "$db_url" -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
INSERT INTO tenants (id, name) VALUES
  ('00000000-0000-4000-8000-000000000001', 'st-mary'),
  ('00000000-0000-4000-8000-000000000002', 'st-jude');

CREATE FUNCTION pg_temp.job(n int, tenant int, state text, run_at timestamptz,
                            lease timestamptz, attempt int) RETURNS void LANGUAGE sql AS $$
  INSERT INTO jobs (id, tenant_id, model, packing, image_count, input_key, max_attempts,
                    state, run_at, attempt, lease_expires_at, worker_id, started_at,
                    result_key, error_code, finished_at)
  VALUES (('00000000-0000-4000-9000-' || lpad(n::text, 12, '0'))::uuid,
          ('00000000-0000-4000-8000-00000000000' || tenant)::uuid,
          'mnist-cryptonets', 'throughput', 100, 'in/' || n, 3,
          state, run_at, attempt, lease,
          CASE WHEN state = 'running' THEN 'worker-' || n END,
          CASE WHEN state <> 'queued' THEN now() - interval '1 minute' END,
          CASE WHEN state = 'succeeded' THEN 'out/' || n END,
          CASE WHEN state = 'failed' THEN 'evaluation' END,
          CASE WHEN state IN ('succeeded', 'failed', 'cancelled') THEN now() END)
$$;

-- Counted: queued and ready (3: one due exactly now, two overdue), running (3: two with a live
-- lease, one whose lease ran out and waits for rescue).
SELECT pg_temp.job(1, 1, 'queued', now(), NULL, 0);
SELECT pg_temp.job(2, 1, 'queued', now() - interval '10 minutes', NULL, 0);
SELECT pg_temp.job(3, 2, 'queued', now() - interval '1 second', NULL, 1);
SELECT pg_temp.job(4, 1, 'running', now() - interval '1 minute', now() + interval '1 minute', 1);
SELECT pg_temp.job(5, 2, 'running', now() - interval '1 minute', now() + interval '1 minute', 2);
SELECT pg_temp.job(6, 2, 'running', now() - interval '5 minutes', now() - interval '1 minute', 1);
-- Not counted: retries waiting for their backoff (2), finished jobs (4).
SELECT pg_temp.job(7, 1, 'queued', now() + interval '5 minutes', NULL, 1);
SELECT pg_temp.job(8, 2, 'queued', now() + interval '1 hour', NULL, 2);
SELECT pg_temp.job(9, 1, 'succeeded', now() - interval '2 minutes', NULL, 1);
SELECT pg_temp.job(10, 2, 'succeeded', now() - interval '2 minutes', NULL, 1);
SELECT pg_temp.job(11, 1, 'failed', now() - interval '2 minutes', NULL, 3);
SELECT pg_temp.job(12, 2, 'cancelled', now() - interval '2 minutes', NULL, 0);
SQL

for query in "$@"; do
  expect "$query" 6 "3 queued and ready + 3 running; 2 retries in backoff and 4 finished ignored"
done

# The queue moves on: a backoff ends (+1), a running job succeeds (-1), a queued one is
# cancelled (-1), a new one arrives (+1), a cancel is requested on a running job (still running).
psql_do "UPDATE jobs SET run_at = now() - interval '1 second' WHERE id = '00000000-0000-4000-9000-000000000007'"
psql_do "UPDATE jobs SET state = 'succeeded', result_key = 'out/4', lease_expires_at = NULL, finished_at = now() WHERE id = '00000000-0000-4000-9000-000000000004'"
psql_do "UPDATE jobs SET state = 'cancelled', finished_at = now() WHERE id = '00000000-0000-4000-9000-000000000001'"
psql_do "UPDATE jobs SET cancel_requested = true WHERE id = '00000000-0000-4000-9000-000000000005'"
psql_do "INSERT INTO jobs (id, tenant_id, model, packing, image_count, input_key, max_attempts) VALUES ('00000000-0000-4000-9000-000000000013', '00000000-0000-4000-8000-000000000001', 'mnist-lenet5', 'latency', 1, 'in/13', 3)"
for query in "$@"; do
  expect "$query" 6 "after a backoff ended, a success, a cancel and a new job"
done

# Everything finishes: back to zero.
psql_do "UPDATE jobs SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL, cancel_requested = false WHERE state IN ('queued', 'running')"
for query in "$@"; do
  expect "$query" 0 "all jobs finished (scale to zero)"
done
