"""The Dagster layer: assets, checks, jobs, sensors, schedules, resources and the IO manager."""
