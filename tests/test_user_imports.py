"""The user's code is tracked by what it imports (stages/core/imports.user_code): a listed source's
imports that resolve inside the user's project -- module files and packages, transitively, relative
imports too, a project outside the clone included -- become dependencies of the stages that build the
workload; the standard library, site-packages and kickoff's own modules (tracked apart) do not."""
from __future__ import annotations

import json

from pathlib import Path

import pytest

from stages.core.imports import user_code
from stages.pipeline import declaration as pipeline


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_a_listed_sources_imports_inside_the_project_are_followed_transitively(tmp_path):
    clone, outside = tmp_path / "clone", tmp_path / "myproject"
    _write(clone, {
        "userwl/__init__.py": "",
        "userwl/model.py": ("import os, json\nimport yaml\nimport torch.nn as nn\nfrom . import helpers\n"
                            "from .layers import block\nimport userwl.data.loading\nfrom stages.workloads.nqm import NoisyQuadratic\n"
                            "from mypkg.noise import scale\n"
                            "def f():\n    from userwl import late  # inside a function: imported when it runs\n"),
        "userwl/helpers.py": "from userwl.deep import util\n",  # reached only through helpers
        "userwl/deep.py": "import math\n",
        "userwl/layers/__init__.py": "from .block import block\n",
        "userwl/layers/block.py": "block = 1\n",
        "userwl/data/__init__.py": "",
        "userwl/data/loading.py": "",
        "userwl/late.py": "",
        "userwl/unused.py": "",  # in the package, imported by nothing: not tracked
    })
    _write(outside, {"src/mypkg/__init__.py": "", "src/mypkg/noise.py": "from mypkg import scales\n",
                     "src/mypkg/scales.py": "from ..x import y\n"})  # beyond the top package: ignored
    files, kickoff = user_code(["userwl/model.py", "../myproject/src/mypkg/noise.py"], clone)
    assert files == ["../myproject/src/mypkg/__init__.py", "../myproject/src/mypkg/scales.py",
                     "userwl/__init__.py", "userwl/data/__init__.py", "userwl/data/loading.py", "userwl/deep.py",
                     "userwl/helpers.py", "userwl/late.py", "userwl/layers/__init__.py", "userwl/layers/block.py"]
    assert kickoff == {"stages", "stages.workloads", "stages.workloads.nqm"}
    # without the outside project listed, its package is not the user's project: not followed
    assert not [f for f in user_code(["userwl/model.py"], clone)[0] if f.startswith("..")]


def test_a_listed_folder_is_tracked_whole_and_what_it_imports_beside_it(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from shared import tools\n", "shared/__init__.py": "",
                      "shared/tools.py": "", "data.csv": "x\n"})
    assert user_code(["pkg", "data.csv"], tmp_path)[0] == ["shared/__init__.py", "shared/tools.py"]


def test_installed_and_standard_library_modules_are_never_the_users(tmp_path):
    """Modules of the environment are not the project's, and a file listed from a site-packages folder is
    tracked as listed, its imports not followed (installed code changes with the environment, not by edits)."""
    _write(tmp_path, {"m.py": "import yaml, json, numpy, os.path\nfrom collections import abc\n",
                      ".venv/lib/python3.11/site-packages/inst/__init__.py": "",
                      ".venv/lib/python3.11/site-packages/inst/mod.py": "from inst import other\n",
                      ".venv/lib/python3.11/site-packages/inst/other.py": ""})
    assert user_code(["m.py"], tmp_path) == ([], set())
    assert user_code([".venv/lib/python3.11/site-packages/inst/mod.py"], tmp_path)[0] == []


def test_the_stages_that_build_the_workload_depend_on_the_helpers_in_dvc_yaml_and_the_snakefile(tmp_path, monkeypatch):
    """workload_code -- what dvc.yaml lists and what the Snakefile's rules take as input -- holds the helper
    a listed source imports, for every stage that builds the workload and for no other."""
    monkeypatch.chdir(pipeline.ROOT)
    helper = pipeline.ROOT / "tests" / "curve_workload.py"  # a module of this repository, imported by a source below
    source = tmp_path / "wl.py"
    source.write_text("from tests import curve_workload\n")
    params = {"workload": {"name": "nqm", "sources": [str(source)]}}
    assert "tests/curve_workload.py" in pipeline.workload_code(params) and helper.is_file()
    for s in pipeline.STAGES:
        dvc_deps = pipeline._dvc_inputs(s, params, [])
        snake = pipeline.snakemake_inputs(s, params)
        assert ("tests/curve_workload.py" in dvc_deps) == s.uses_workload == ("tests/curve_workload.py" in snake), s.name


@pytest.mark.slow
def test_the_documented_project_outside_the_clone_renders_and_builds(tmp_path):
    """docs/own-model.md's project beside the clone: its params block, as written, renders a dvc.yaml
    that tracks the outside source (and the module it imports) for the stages that build the workload,
    and `python -m stages` builds the workload from it. PYTHONPATH stands in for `pip install -e
    ../myproject` (the suite must not install into the shared environment)."""
    import re
    import sys

    import yaml

    from tests.conftest import make_project, run, write_params

    doc = (pipeline.ROOT / "docs/own-model.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    section = doc.split("## Your project where it lives", 1)[1]
    assert "pip install -e ../myproject" in section
    workload = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))["workload"]
    package = tmp_path / "myproject" / "myproject"
    _write(package, {"__init__.py": "", "helpers.py": "WIDTH = 32\n",
                     "workload.py": code.replace("import torch\n", "import torch\nfrom myproject import helpers\n", 1)})
    clone = make_project(tmp_path / "clone", {"workload": workload, "family": {"candidates": None}}, commit=False,
                         env={"PYTHONPATH": str(tmp_path / "myproject")})
    declared = yaml.safe_load((clone / "dvc.yaml").read_text())["stages"]
    for name in ("probe", "baseline", "report"):
        deps = declared[name]["deps"]
        tracked = {"../myproject/myproject/workload.py", "../myproject/myproject/helpers.py",
                   "../myproject/myproject/__init__.py"} <= set(deps)
        assert tracked == (name != "report"), (name, deps)
    proc = run([sys.executable, "-m", "stages"], clone, env={"PYTHONPATH": str(tmp_path / "myproject")})
    assert "name: myproject.workload:make" in proc.stdout
    write_params(clone, {"workload": {"sources": ["../myproject/myproject/missing.py"]}})
    proc = run([sys.executable, "-m", "stages"], clone, check=False, env={"PYTHONPATH": str(tmp_path / "myproject")})
    assert proc.returncode == 2 and "missing.py" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_kickoffs_import_graph_is_cached_by_content_and_an_edited_module_is_read_again(tmp_path, monkeypatch):
    """stages/core/imports.py remembers what each module imports (.kickoff/cache/imports.json) by the hash of its
    source: the cached answer is the parsed one, and an edit that adds an import is seen at once."""
    from stages.core import imports

    module = tmp_path / "stages" / "extra" / "probe_like.py"
    module.parent.mkdir(parents=True)
    (tmp_path / "stages" / "__init__.py").write_text("")
    (module.parent / "__init__.py").write_text("")
    (tmp_path / "stages" / "core.py").write_text("")
    module.write_text("import os\n")
    monkeypatch.setattr(imports, "ROOT", tmp_path)
    monkeypatch.setattr(imports, "CACHE", tmp_path / ".kickoff" / "cache" / "imports.json")
    monkeypatch.setattr(imports, "_parsed", None)
    for f in (imports.module_file, imports.imports_of, imports._code_deps):
        f.cache_clear()
    try:
        assert imports.imports_of("stages.extra.probe_like") == frozenset()
        module.write_text("import os\n\ndef later():\n    from stages import core\n")
        imports.imports_of.cache_clear()
        monkeypatch.setattr(imports, "_parsed", None)  # a new process: only the file on disk
        assert imports.imports_of("stages.extra.probe_like") == {"stages", "stages.core"}
        cached = json.loads(imports.CACHE.read_text())
        assert sorted(cached.values()) == [[], ["stages", "stages.core"]]
        imports.imports_of.cache_clear()
        monkeypatch.setattr(imports, "_parsed", None)
        monkeypatch.setattr(imports.ast, "parse", None)  # answered from the cache: nothing is parsed
        assert imports.imports_of("stages.extra.probe_like") == {"stages", "stages.core"}
    finally:
        for f in (imports.module_file, imports.imports_of, imports._code_deps):
            f.cache_clear()
