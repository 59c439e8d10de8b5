"""kickoff: the Deep Learning Tuning Playbook's "starting a new project" phase as a pipeline.

probe -> throughput -> scaling -> select -> baseline (-> report). Each stage is a module run as
`python -m stages.<name>`; the shared pieces are:

    config.py     params.yaml, validated as a whole before any work
    workload.py   the workload interface and its registry (built-ins in workloads/)
    optim.py      optimizer construction from the optimizer section
    device.py     device choice, threads, seeding, synchronisation
    train.py      the one training step, evaluation and "target reached" check
    io.py         atomic writes of every output
    pipeline.py   the one pipeline declaration that dvc.yaml and the Snakefile come from
"""
