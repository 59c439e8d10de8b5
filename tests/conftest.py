"""Shared test fixtures: a throw-away copy of the project in a temporary git repository, and a
runner for stage commands / the real `dvc` and `snakemake` executables in it."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

# The tests that press Ctrl-C (SIGINT to a stage, a fault injected at the lock write) need it delivered: a suite
# started in the background of a non-interactive shell (`make test &` in a script) inherits SIGINT ignored,
# an ignored signal stays ignored across exec in every child, and Python then installs no KeyboardInterrupt.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

BIN = Path(sys.executable).parent  # dvc and snakemake live next to the interpreter running pytest

# Copied into the temporary project: the pipeline's sources, never its outputs or caches.
PROJECT_FILES = ("stages", "dvc.yaml", "params.yaml", "Snakefile", "pyproject.toml", ".dvcignore", ".gitignore",
                 "envs", "profiles")


def tool_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = ""  # the temp copy's own stages/ must win (python -m puts cwd first)
    env["DVC_NO_ANALYTICS"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "kickoff tests"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "tests@example.com"
    env.update(extra or {})
    return env


def run(cmd: list[str] | str, cwd: Path, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run a command (list, or a string for the shell) in `cwd` with the project's tools on PATH."""
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(kw.pop("env", None)), capture_output=True, text=True,
                          timeout=timeout, shell=isinstance(cmd, str), **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def write_params(root: Path, overrides: dict) -> dict:
    """Deep-merge `overrides` into root/params.yaml (written back with PyYAML) and return the result."""
    params = yaml.safe_load((root / "params.yaml").read_text())

    def merge(dst: dict, src: dict) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict) and k != "kwargs":
                merge(dst[k], v)
            else:
                dst[k] = v

    merge(params, overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def make_project(dest: Path, params: dict | None = None, *, dvc: bool = True, commit: bool = True,
                 env: dict | None = None) -> Path:
    """Copy the project into `dest`, apply params overrides, git init (+ dvc init), regenerate dvc.yaml, commit."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    if params:
        write_params(dest, params)
    run(["git", "init", "-q", "-b", "main"], dest)
    if dvc:
        run(["dvc", "init", "-q", "--force"], dest)
        run(["dvc", "config", "core.analytics", "false"], dest)
        if (ROOT / ".dvc" / "plots").is_dir():  # custom Vega-Lite templates (log axes)
            shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")
    run([sys.executable, "-m", "stages.pipeline"], dest, env=env)  # env: e.g. PYTHONPATH for a project outside
    if commit:
        run(["git", "add", "-A"], dest)
        run(["git", "commit", "-q", "-m", "project"], dest)
    return dest


@pytest.fixture
def project(tmp_path: Path):
    """A factory: project(params_overrides) -> path of a committed temporary copy of kickoff."""
    counter = iter(range(1000))

    def factory(params: dict | None = None, **kw) -> Path:
        return make_project(tmp_path / f"project{next(counter)}", params, **kw)

    return factory


# The files whose module fixtures run whole pipelines take 2-3 minutes each: started first, they run
# side by side on the two workers of `make test` (--dist loadfile) while the other files follow, the
# longest first, instead of a long one starting last and the suite waiting for it alone.
LONG_FILES = ("test_pipeline_declaration.py", "test_team_workflow.py", "test_interrupts.py",
              # then the next longest (each 30-60 s), so that no long file starts last and runs alone
              "test_robust.py", "test_one_measurement.py", "test_robust_pipeline.py", "test_benchmarks.py",
              "test_dataset_workload.py", "test_one_line_errors.py", "test_cluster.py", "test_manifest.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))



@pytest.fixture
def fresh_my_project():
    """Tests that import a `my_project` package they write into tmp_path: another test's, imported earlier in
    this worker, is forgotten before and after (Python caches a package, and its path, once imported)."""
    def forget():
        for name in [m for m in sys.modules if m == "my_project" or m.startswith("my_project.")]:
            del sys.modules[name]
    forget()
    yield
    forget()
