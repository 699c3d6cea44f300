"""The trigger DDL of signalbus, as plain SQL files (loaded by signalbus.triggers)."""
