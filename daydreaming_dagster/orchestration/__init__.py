"""Module paths that dagster.yaml files written before the code location moved by domain still
name (`daydreaming_dagster.orchestration.sqlite_storage`, `...postgres_storage`). Each re-exports
its storages from `instance/`; nothing new goes here, and nothing in the package imports it."""
