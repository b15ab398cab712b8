"""What the Dagster instance records, read back: materializations, runs, partitions, and the
decisions made from them (what to train, the leaderboard, whether serving is current)."""
