"""make bench: Paydrop's benchmarks, each a ratio to a baseline measured in the same run (README.md)."""
