"""The package's shape, checked (issue 11 parts 1, 2 and 4): imports form no circle and go only
downward (core and workloads at the bottom, the pipeline declaration above them, the stages on top,
none importing another); every output path is declared once and written by the stage the
declaration says; every stage sees only the params keys it declares."""
from __future__ import annotations

import ast
import pickle
import re

import pytest

from stages.core import outputs as out
from stages.core.config import SECTIONS, load_params
from stages.core.declared import UndeclaredParamError, replace_sections, restrict
from stages.core.imports import ROOT, imports_of, module_file
from stages.pipeline import declaration as pipeline

STAGE_PACKAGES = {"settings", "family", "probe", "throughput", "scaling", "select", "baseline", "report"}
# what each layer may import (besides itself); the stages' entry module `stages.__main__` sits on top
MAY_IMPORT = {"core": {"core", "workloads"}, "workloads": {"core", "workloads"},
              "search": {"core", "search", "workloads"},  # the learning-rate search the family and scaling stages share
              "pipeline": {"core", "pipeline", "workloads"},  # the declaration tracks the configured workload's module
              **{p: {"core", "workloads", "search", "pipeline"} for p in STAGE_PACKAGES}}


def all_modules() -> list[str]:
    modules = []
    for f in sorted((ROOT / "stages").rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and module_file(module).name == "__init__.py") else None


def test_the_module_walk_sees_every_module():
    modules = all_modules()
    assert "stages.core.outputs" in modules and "stages.probe.search" in modules
    assert all(module_file(m) is not None for m in modules)
    assert "stages.core.errors" in imports_of("stages.core.config")


def test_no_import_circle():
    graph = {m: {i for i in imports_of(m) if i != m} for m in all_modules()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n] if n in path else [m, n]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_imports_only_go_downward_and_no_stage_imports_another():
    bad = []
    for m in all_modules():
        layer = package_of(m)
        if layer is None:  # stages/__init__.py and stages/__main__.py: the top
            continue
        for target in imports_of(m):
            other = package_of(target)
            if other is not None and other != layer and other not in MAY_IMPORT[layer]:
                bad.append(f"{m} imports {target}")
    assert not bad, "\n".join(bad)


def entry_points() -> set[str]:
    """Stage modules with a top-level main() / main_*(): what a stage command runs."""
    found = set()
    for m in all_modules():
        if package_of(m) not in STAGE_PACKAGES:
            continue
        tree = ast.parse(module_file(m).read_text())
        if any(isinstance(n, ast.FunctionDef) and (n.name == "main" or n.name.startswith("main_")) for n in tree.body):
            found.add(m)
    return found


def test_no_module_imports_another_stage_entry_point():
    """Only a stage's own command module (stage.py, __main__.py) may import its entry points."""
    entries = entry_points()
    assert {"stages.scaling.trials", "stages.scaling.aggregate", "stages.probe.stage"} <= entries
    bad = []
    for m in all_modules():
        if m.rsplit(".", 1)[-1] in ("stage", "__main__"):
            continue
        bad += [f"{m} imports the entry point {t}" for t in imports_of(m) if t in entries and t != m]
    assert not bad, "\n".join(bad)


def test_each_alias_and_type_is_defined_once():
    seen: dict[str, list[str]] = {}
    for f in sorted((ROOT / "stages").rglob("*.py")):
        for node in ast.parse(f.read_text()).body:  # module-level `Name = int` / `Name = Literal[...]`
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                value = node.value
                is_alias = (isinstance(value, ast.Name) and value.id in {"int", "float", "str"}) or (
                    isinstance(value, ast.Subscript) and isinstance(value.value, ast.Name) and value.value.id == "Literal")
                if is_alias:
                    seen.setdefault(node.targets[0].id, []).append(str(f.relative_to(ROOT)))
    twice = {name: files for name, files in seen.items() if len(files) > 1}
    assert not twice, twice
    assert {"Steps", "BatchSize", "Seconds", "Bytes"} <= set(seen)


# ---------------------------------------------------------------------------- outputs

def declared_outputs() -> list[out.Output]:
    return out.all_outputs()  # the manifests included


def test_every_output_is_written_by_exactly_the_stage_that_declares_it():
    written = [(o, s) for s in pipeline.STAGES for o in s.outputs]
    paths = [o.path for o, _ in written]
    assert len(paths) == len(set(paths)), "an output declared by two stages"
    assert sorted(paths) == sorted({o.path for o in declared_outputs()}), "an output no stage writes"
    for o, s in written:
        assert o.producer == s.cmd, (o.path, o.producer, s.cmd)
    for s in pipeline.STAGES:
        for i in s.inputs:
            assert i.path in paths, (s.name, i.path)


def test_no_stage_spells_an_output_path_itself():
    """Paths live in stages/core/outputs.py only (docstrings may name them for the reader)."""
    pattern = re.compile(r"reports/\w+(/\w+)*\.\w+|reports/\w+/")
    found = []
    for f in sorted((ROOT / "stages").rglob("*.py")):
        if f.name == "outputs.py" and f.parent.name == "core":
            continue
        tree = ast.parse(f.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and pattern.search(node.value)):
                found.append(f"{f.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    assert not found, "\n".join(found)


def test_metrics_outputs_are_json_and_prose_has_its_own_file():
    assert all(o.path.endswith(".json") for o in declared_outputs() if o.kind == "metrics")
    assert out.THROUGHPUT_NOTES.path.endswith(".md") and out.THROUGHPUT_NOTES in pipeline.stage("report").inputs


# ---------------------------------------------------------------------------- declared params

@pytest.mark.parametrize("s", pipeline.STAGES, ids=lambda s: s.name)
def test_every_declared_key_exists_in_the_schema(s):
    params = load_params(ROOT / "params.yaml")
    narrowed = restrict(params, pipeline.declared_keys(s.name), s.name)
    for key in pipeline.declared_keys(s.name):
        section, _, name = key.partition(".")
        assert section in SECTIONS
        value = getattr(getattr(narrowed, section), name) if name else getattr(narrowed, section)
        assert value == (getattr(getattr(params, section), name) if name else getattr(params, section))


def test_an_undeclared_key_raises_naming_the_stage_and_the_key():
    params = load_params(ROOT / "params.yaml")
    probe = restrict(params, pipeline.declared_keys("probe"), "probe")
    assert probe.optimizer.momentum == params.optimizer.momentum and probe.probe == params.probe
    with pytest.raises(UndeclaredParamError, match=r"stage 'probe' read params key 'optimizer.weight_decay'.*"
                                                     r"stages/pipeline/declaration.py"):
        probe.optimizer.weight_decay
    with pytest.raises(UndeclaredParamError, match=r"'scaling'"):
        probe.scaling
    select = restrict(params, pipeline.declared_keys("select"), "select")
    for key in ("max_steps", "lr_min", "lr_max"):  # select's messages take the study's limits from its outputs
        with pytest.raises(UndeclaredParamError):
            getattr(select.scaling, key)
    baseline = restrict(params, pipeline.declared_keys("baseline"), "baseline")
    with pytest.raises(UndeclaredParamError, match="runtime.seed"):  # its seed comes from initial_config.yaml
        baseline.runtime.seed
    trials = restrict(params, pipeline.declared_keys("scaling_trials"), "scaling_trials")
    assert trials.scaling.batch_sizes == params.scaling.batch_sizes  # the fan-out list it iterates over


def test_narrowed_params_survive_pickling_and_keep_their_limits():
    """The probe ships its params to trial processes."""
    params = load_params(ROOT / "params.yaml")
    probe = pickle.loads(pickle.dumps(restrict(params, pipeline.declared_keys("probe"), "probe")))
    assert probe.optimizer.name == params.optimizer.name
    with pytest.raises(UndeclaredParamError):
        probe.optimizer.nesterov
    swapped = replace_sections(probe, optimizer=type(params.optimizer)(name="adam"))
    assert swapped.optimizer.beta1 == 0.9 and swapped.probe == params.probe
    with pytest.raises(AttributeError):
        probe.optimizer.name = "adam"


def test_stages_load_their_params_through_the_declaration():
    """Each stage's entry point narrows params by its own name (run end to end in
    test_pipeline_declaration.py, where an undeclared read would fail the run)."""
    expected = {"probe": "stages/probe/stage.py", "throughput": "stages/throughput/stage.py",
                "scaling_trials": "stages/scaling/trials.py", "scaling": "stages/scaling/aggregate.py",
                "select": "stages/select/stage.py", "baseline": "stages/baseline/stage.py"}
    for name, path in expected.items():
        assert f'load_stage_params("{name}")' in (ROOT / path).read_text(), path
    assert "load_params(" not in "".join((ROOT / p).read_text() for p in expected.values())
