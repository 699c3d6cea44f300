-- A listener announces that it is awake for table :table (see notify_function.sql):
-- true when it took the table's `awake` lock, false when another listener holds it
-- (or the table is gone: NULL). A session lock: it outlives the transaction.
SELECT pg_try_advisory_lock((1935832435::bigint << 32) | to_regclass(:table)::oid::bigint)
