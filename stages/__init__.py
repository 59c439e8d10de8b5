"""kickoff: the Deep Learning Tuning Playbook's "starting a new project" phase as a pipeline.

probe -> throughput -> scaling -> select -> baseline (-> report). Each stage is a subpackage run as
`python -m stages.<stage>`; inside it, `stage.py` reads its inputs and writes its outputs and the
other modules compute. Shared parts:

    core/        params schema (config.py), the error family, atomic I/O, device, optimizer,
                 the one training step, logging, plotting
    workloads/   the workload interface and registry (base.py) and the built-ins
    pipeline/    the one declaration that dvc.yaml and the Snakefile come from

`python -m stages` validates params.yaml and prints the resolved values.
"""
