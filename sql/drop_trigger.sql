-- Remove the signalbus trigger of {table} (a quoted, possibly schema-qualified identifier).
DROP TRIGGER IF EXISTS signalbus_notify ON {table}
