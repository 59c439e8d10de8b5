#!/usr/bin/env bash
# Snakemake's poll for one job id from submit.sh: prints running, success or failed (each answer is also
# appended to .cluster-jobs/polls.log, to see what Snakemake was told).
set -euo pipefail
job=".cluster-jobs/$1"
verdict() { [[ "$(cat "$job.exit")" == 0 ]] && echo success || echo failed; }
if [[ -f "$job.exit" ]]; then
    answer="$(verdict)"
elif [[ -f "$job.pid" ]] && ! kill -0 "$(cat "$job.pid")" 2>/dev/null; then
    # gone: it may have written its exit code since the first look; without one it was killed
    if [[ -f "$job.exit" ]]; then answer="$(verdict)"; else answer=failed; fi
else
    answer=running
fi
echo "$1 $answer" >> .cluster-jobs/polls.log
echo "$answer"
