"""The Dagster instance: the storages named in dagster.yaml (pooled SQLite, pooled PostgreSQL), opening
an instance safely when several processes start at once (opening), and the offline instance's own
configuration (offline_home).

May import `compat`, `store` and Dagster; never the code location or the runner."""
