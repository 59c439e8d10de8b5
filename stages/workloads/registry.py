"""The built-in workloads by name, apart from the interface (stages/workloads/base.py) so that the
pipeline declaration can tell which module a configured workload is without importing torch: a
stage's code dependencies are the configured workload's own modules, not every built-in one."""

BUILTINS: dict[str, str] = {
    "digits_mlp": "stages.workloads.digits_mlp:DigitsMLP",
    "synthetic_cnn": "stages.workloads.synthetic_cnn:SyntheticCNN",
    "nqm": "stages.workloads.nqm:NoisyQuadratic",
    "dataset": "stages.workloads.dataset:DatasetWorkload",
    "char_lm": "stages.workloads.char_lm:CharLM",
}


def workload_module(name: str) -> str:
    """'digits_mlp' -> 'stages.workloads.digits_mlp'; 'my_project.model:make' -> 'my_project.model'."""
    return BUILTINS.get(name, name).partition(":")[0]
