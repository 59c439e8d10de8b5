"""Stage `settings`, the pipeline's first: the settings in force, validated once for DVC and Snakemake alike.

    python -m stages.settings

Reads params.yaml and the active profiles (the files dvc.yaml records: `python -m stages.pipeline
--profile NAME`) with kickoff's one YAML reader, and refuses, in one line, a misspelt section or key,
a key given twice, a wrong type or value, a dvc.yaml rendered for other settings, workload arguments
(or a family candidate's) its factory does not take, and a module of your project the workload is
built from that `workload.sources` does not list -- the checks the Snakefile runs before it plans.
Then writes
reports/settings/:
    effective.yaml   the settings in force (params.yaml + profiles, defaults filled in); every other stage
                     tracks its keys here, so a profile's keys, new ones included, rerun what reads them,
                     and an overridden params.yaml key reruns nothing
    overrides.yaml   which params.yaml keys the profiles override, with both values
and prints them: one line listing the overrides when a profile is active, and one line for each
overridden key whose params.yaml value changed, naming the file that holds the value in force.
(stages/core/effective.py has the details; Snakemake brings these files up to date before it plans.)
"""
from __future__ import annotations

import sys
from pathlib import Path

from stages.core import effective
from stages.core.io import write_text
from stages.pipeline.declaration import check_rendered, static_key


def main() -> None:
    root = Path.cwd()
    settings = effective.resolve(root)
    check_rendered(root)
    effective.check_static(settings, root, key=static_key(root, settings.params))
    line = effective.summary(settings)
    if line:
        print(line, file=sys.stderr)
    previous = effective.previous_record(root)
    for line in [*effective.edits(previous, settings), *effective.inactive_edits(previous, settings)]:
        print(line, file=sys.stderr)
    for path, text in effective.files(settings).items():
        write_text(root / path, text)
