"""Pure, Dagster-free ML code: datasets, models, metrics, selection and aggregation."""
