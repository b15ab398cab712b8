"""The content-addressed artifact store and the typed artifacts it holds (no Dagster)."""
