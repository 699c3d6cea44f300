-- The source (body) of the installed shared function, if any: compared with
-- notify_function.sql to tell an outdated one.
SELECT prosrc FROM pg_proc WHERE proname = 'signalbus_notify' AND pronargs = 0
