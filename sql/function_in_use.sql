-- Whether any trigger still calls the shared function (false when it does not exist).
SELECT EXISTS (
    SELECT FROM pg_trigger AS t
    JOIN pg_proc AS p ON p.oid = t.tgfoid
    WHERE p.proname = 'signalbus_notify'
)
