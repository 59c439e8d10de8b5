"""Domain type aliases, defined once: annotations say what a number is and its unit."""
from __future__ import annotations

BatchSize = int      # examples per optimizer step (per device)
Steps = int          # optimizer steps
Seconds = float      # wall-clock seconds
Bytes = int          # memory, bytes
ExamplesPerS = float  # throughput, examples per second
