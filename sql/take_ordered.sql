-- A flusher of an ordered signal model takes the `ordered` lock of table :table, so
-- that one flusher at a time, across processes, sends its rows: true when taken,
-- false when another session holds it (NULL: the table is gone). A session lock,
-- held for one flush; it goes with the session of a flusher that dies.
SELECT pg_try_advisory_lock((1935832437::bigint << 32) | to_regclass(:table)::oid::bigint)
