"""ml_assets: multi-model ML workflows on Dagster."""
