#!/usr/bin/env bash
# Submit one Snakemake job script as a background process of its own (what sbatch does on a cluster) and
# print its job id. Its output goes to .cluster-jobs/ID.log, its exit code to .cluster-jobs/ID.exit when it
# ends, and the process id to .cluster-jobs/ID.pid (status.sh reads them).
set -euo pipefail
jobscript="$1"
dir=.cluster-jobs
mkdir -p "$dir"
id="$(date +%s%N)-$$"
cp "$jobscript" "$dir/$id.sh"  # Snakemake removes its temporary job script; keep what ran
# setsid + closed descriptors: the job outlives this script and holds none of Snakemake's pipes
setsid bash -c 'echo $$ > "$1.pid"; bash "$1.sh" > "$1.log" 2>&1; echo $? > "$1.exit"' _ "$dir/$id" \
    < /dev/null > /dev/null 2>&1 &
echo "$id"
