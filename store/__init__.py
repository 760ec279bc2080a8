"""The store: BD_EVENTS -> DuckDB history; the history and SQL API."""
