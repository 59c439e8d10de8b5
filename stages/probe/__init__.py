"""Stage `probe`: which batch sizes fit in memory, with the measured peak and why each failure failed."""
