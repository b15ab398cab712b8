"""Thin Dagster assets: orchestration only; the work lives in `ml_assets.ml`."""
