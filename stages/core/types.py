"""Domain type aliases, defined once: annotations say what a number is and its unit."""
from __future__ import annotations

from typing import Literal

BatchSize = int      # examples per optimizer step (per device)
Steps = int          # optimizer steps
Seconds = float      # wall-clock seconds
Bytes = int          # memory, bytes
ExamplesPerS = float  # throughput, examples per second

# Labels that files carry, so writers and the readers that validate them share one list.
ProbeStatus = Literal["fits", "oom", "over_budget", "killed", "capped"]       # a probe trial (probe.csv)
Outcome = Literal["reached", "not_reached", "diverged", "stopped_early", "plateaued", "pruned", "paused"]  # a training run ("paused": it may go on, stages/search/trial.LiveTrial; "pruned": the search stopped it at a rung, clearly behind the best)
# A scaling trial row that is no training run: a size the earlier stages ruled out ("skipped"), or one
# wave 2 of the scaling study predicted instead of training ("predicted": stages/scaling/waves.py).
NOT_TRAINED = ("skipped", "predicted")
