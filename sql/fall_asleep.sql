-- A listener gives back the `awake` lock of table :table (see notify_function.sql):
-- writers notify from now on.
SELECT pg_advisory_unlock((1935832435::bigint << 32) | to_regclass(:table)::oid::bigint)
