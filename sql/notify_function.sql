-- The one function behind every signalbus trigger (created or replaced idempotently).
--
-- It wakes a listener: it notifies the channel given as the trigger's first
-- argument (TG_ARGV[0]), with the name of the table that got the rows as
-- payload, schema-qualified ("schema.table") unless the table is in "public".
-- Statement-level triggers and PostgreSQL folding identical notifications of a
-- transaction make that at most one notification per table per transaction.
--
-- It does not notify while a listener serving the table is awake: PostgreSQL
-- serialises the commits of notifying transactions (one cluster-wide lock,
-- held through the commit's WAL flush), so writers that notify commit one at a
-- time, and writers that do not, together.
--
-- THE WAKE PROTOCOL. Two advisory locks per table, bigint keys: a namespace in
-- the high 32 bits, the table's OID in the low 32 bits.
--
--   awake   (namespace 1935832435): held by a listener, exclusively, for its
--           session, while it flushes the table and will flush it again
--           before it sleeps (sql/wake_up.sql).
--   skipped (namespace 1935832436): held, shared, by each writer that did not
--           notify, until its transaction ends.
--
-- A writer (this function): if it can take `awake` shared, giving it back at
-- once, no listener is awake: it notifies. Otherwise it registers under
-- `skipped` and looks at `awake` again: free now, it notifies after all;
-- still held, it does not notify. If it cannot register, it notifies.
--
-- A listener falling asleep: it gives `awake` back (sql/fall_asleep.sql), then
-- tries to take `skipped` exclusively, giving it back in the same statement
-- (sql/skipped_writers.sql). Taken: no writer that skipped is still running,
-- and it flushes the table once more. Not taken: it tries again a moment
-- later, until it can, then flushes once more.
--
-- Why no row goes unannounced: a writer skips only if it registered under
-- `skipped` and after that saw `awake` held. The listener gives `awake` back
-- before it tries `skipped`. So a writer that skipped had registered before
-- the listener's try: the try fails while that writer's transaction runs, and
-- the flush after the first try that succeeds sees its rows (a transaction
-- releases its locks after its commit became visible). And while a listener
-- holds `skipped` for the one statement of its try, writers cannot register:
-- they notify.
--
-- Why writers never wait: they only ever try locks (pg_try_*); no lock a
-- listener holds can block them. A listener that is stopped or stuck while
-- awake keeps writers from notifying, not from committing. One that dies
-- releases `awake` with its session: the next writer notifies. (Rows of
-- writers that skipped just before its death wait for a sweep.) A writer
-- cancelled between taking `awake` shared and giving it back, in one
-- expression, would keep it until its session ends: listeners could not be
-- awake meanwhile and every writer would notify; nothing is lost.
--
-- Listeners that do not take `awake` (older versions, or
-- SIGNALBUS_ALWAYS_NOTIFY) get a notification for every transaction.
CREATE OR REPLACE FUNCTION signalbus_notify() RETURNS trigger
LANGUAGE plpgsql AS $function$
DECLARE
    awake constant bigint := (1935832435::bigint << 32) | TG_RELID::bigint;
    skipped constant bigint := (1935832436::bigint << 32) | TG_RELID::bigint;
    wake boolean;
BEGIN
    -- CASE fixes the order: take, then give back, only if taken.
    wake := CASE WHEN pg_try_advisory_lock_shared(awake)
        THEN pg_advisory_unlock_shared(awake) ELSE false END;
    IF NOT wake THEN
        IF pg_try_advisory_xact_lock_shared(skipped) THEN
            wake := CASE WHEN pg_try_advisory_lock_shared(awake)
                THEN pg_advisory_unlock_shared(awake) ELSE false END;
        ELSE
            wake := true;
        END IF;
    END IF;
    IF wake THEN
        PERFORM pg_notify(
            TG_ARGV[0],
            CASE
                WHEN TG_TABLE_SCHEMA = 'public' THEN TG_TABLE_NAME
                ELSE TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME
            END
        );
    END IF;
    RETURN NULL;
END;
$function$
