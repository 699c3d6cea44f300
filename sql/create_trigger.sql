-- Notify {channel} after every INSERT statement on {table}.
-- {table}: a quoted, possibly schema-qualified identifier; {channel}: a string literal.
CREATE TRIGGER signalbus_notify
AFTER INSERT ON {table}
FOR EACH STATEMENT
EXECUTE FUNCTION signalbus_notify({channel})
