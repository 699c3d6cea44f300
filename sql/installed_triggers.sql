-- Every table having the signalbus trigger, with the trigger's arguments
-- (NUL-terminated strings; the first one is the channel).
SELECT n.nspname AS schema_name, c.relname AS table_name, t.tgargs AS arguments
FROM pg_trigger AS t
JOIN pg_class AS c ON c.oid = t.tgrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
JOIN pg_proc AS p ON p.oid = t.tgfoid
WHERE t.tgname = 'signalbus_notify'
    AND p.proname = 'signalbus_notify'
    AND NOT t.tgisinternal
ORDER BY n.nspname, c.relname
