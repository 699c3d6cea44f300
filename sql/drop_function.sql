-- Remove the shared trigger function once no trigger uses it any more.
DROP FUNCTION IF EXISTS signalbus_notify()
