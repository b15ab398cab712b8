"""Dagster-free rules: the config file, memo keys, the re-ingest rules, this process; and the
names the project gives Dagster (`names.py`, whose one Dagster import is the `AssetKey` type)."""
