-- The one function behind every signalbus trigger (created or replaced idempotently).
--
-- It notifies the channel given as the trigger's first argument (TG_ARGV[0]), with
-- the name of the table that got the rows as payload: schema-qualified
-- ("schema.table") unless the table is in "public". Statement-level triggers and
-- PostgreSQL folding identical notifications of a transaction make that one
-- notification per table per committing transaction, however many rows.
CREATE OR REPLACE FUNCTION signalbus_notify() RETURNS trigger
LANGUAGE plpgsql AS $function$
BEGIN
    PERFORM pg_notify(
        TG_ARGV[0],
        CASE
            WHEN TG_TABLE_SCHEMA = 'public' THEN TG_TABLE_NAME
            ELSE TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME
        END
    );
    RETURN NULL;
END;
$function$
