-- A flusher of an ordered signal model gives back the `ordered` lock of table :table.
SELECT pg_advisory_unlock((1935832437::bigint << 32) | to_regclass(:table)::oid::bigint)
