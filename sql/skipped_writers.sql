-- Whether writers that did not notify may still be running on table :table (see
-- notify_function.sql): false once the listener could take the `skipped` lock
-- exclusively, which it gives back in this same statement.
SELECT CASE
    WHEN pg_try_advisory_lock((1935832436::bigint << 32) | to_regclass(:table)::oid::bigint)
    THEN NOT pg_advisory_unlock((1935832436::bigint << 32) | to_regclass(:table)::oid::bigint)
    ELSE true
END
