"""Each setting is documented once, in the schema: docs/settings.md and the comments of params.yaml are
generated from it (`python -m stages.pipeline.docs`) and must not drift; params.yaml's values stay the user's."""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, fields
from typing import Literal

import pytest
import yaml

from stages.core.config import SECTIONS, setting
from stages.core.errors import ConfigError
from stages.pipeline import docs
from tests.conftest import ROOT, run

REGENERATE = "python -m stages.pipeline.docs"


def comments_by_key(text: str) -> dict[str, str]:
    """'section.key' -> its same-line comment, or the comment lines directly above it joined."""
    found, above, section = {}, [], None
    for line in text.splitlines():
        code, comment = docs.split_comment(line)
        if not code.strip():
            above = above + [comment] if comment is not None else []
            continue
        key = code.strip().split(":")[0]
        if not line.startswith(" "):
            section = key
        elif line.startswith("  ") and not line.startswith("   "):
            found[f"{section}.{key}"] = comment if comment is not None else " ".join(above)
        above = []
    return found


def test_the_committed_files_are_generated_from_the_schema():
    for path, text in docs.generated(ROOT).items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} has drifted from stages/core/config.py: run `{REGENERATE}`"


def test_every_setting_is_in_the_reference_with_its_type_default_range_and_meaning():
    table = docs.settings_markdown()
    for name, cls in SECTIONS.items():
        assert f"## `{name}`" in table
        for f in fields(cls):
            if f.metadata.get("deprecated"):  # accepted, with a line saying so, and left out of the reference
                assert not any(ln.startswith(f"| `{name}.{f.name}` |") for ln in table.splitlines())
                continue
            row = next((ln for ln in table.splitlines() if ln.startswith(f"| `{name}.{f.name}` |")), None)
            assert row is not None, f"{name}.{f.name} is missing from docs/settings.md"
            assert " ".join(f.metadata["help"].split()).replace("|", "\\|") in row
    # known rows, written out by hand: a bounded float, a choice, a custom check, an optional int
    rows = table.splitlines()
    assert "| `optimizer.momentum` | float | `0.9` | [0.0, 1.0) | SGD momentum (fixed) |" in rows
    assert any(r.startswith("| `optimizer.name` | choice | `sgd` | `sgd`, `adam`, `adamw` |") for r in rows)
    assert any(r.startswith("| `probe.min_batch_size` | int | `1` | [1, inf]; a power of two |") for r in rows)
    assert any(r.startswith("| `baseline.eval_every` | int or null | `null` | [1, inf] |") for r in rows)
    assert any(r.startswith("| `optimizer.eps` | float | `1.0e-08` | (0.0, inf] |") for r in rows)


def test_every_key_of_params_yaml_carries_the_schema_comment_and_keeps_its_value():
    text = (ROOT / "params.yaml").read_text()
    regenerated = docs.params_with_comments(text)
    assert yaml.safe_load(regenerated) == yaml.safe_load(text)
    comments = comments_by_key(regenerated)
    for name, cls in SECTIONS.items():
        for f in fields(cls):
            if not f.metadata.get("deprecated"):
                assert comments[f"{name}.{f.name}"] == " ".join(f.metadata["help"].split()), f"{name}.{f.name}"


# A schema with settings the real one may not have yet (others add keys concurrently): the generator
# must handle any field: a new int with a range, an optional choice, a list, a custom check.
def _even(value: int) -> str | None:
    """an even number"""
    return None if value % 2 == 0 else "an even number"


@dataclass(frozen=True)
class _Refine:
    """How the study refines its grid."""

    rounds: int = setting(2, "refinement rounds after the first grid", min=0, check=_even)
    mode: Literal["bracket", "golden"] | None = setting(None, "how to narrow the range; null = no refinement")
    sizes: list[int] = setting([8, 16], "sizes | refined")  # a '|' must not break the table
    ratio: float = setting(1.0e-3, "a very long meaning " + "that keeps going " * 8 + "until it must wrap", min=0.0,
                           min_exclusive=True)


@dataclass(frozen=True)
class _Other:
    flag: bool = setting(True, "a flag in a section the file lacks")


FAKE = {"refine": _Refine, "other": _Other}


def test_a_new_setting_is_documented_and_added_with_its_default():
    table = docs.settings_markdown(FAKE)
    rows = table.splitlines()
    assert "How the study refines its grid." in rows
    assert "| `refine.rounds` | int | `2` | [0, inf]; an even number | refinement rounds after the first grid |" in rows
    assert "| `refine.mode` | choice or null | `null` | `bracket`, `golden` | how to narrow the range; null = no refinement |" in rows
    assert "| `refine.sizes` | list of int | `[8, 16]` | any | sizes \\| refined |" in rows
    assert "| `other.flag` | bool | `true` | any | a flag in a section the file lacks |" in rows

    user = ("# my header, kept\n"
            "\n"
            "refine:   # a stale section comment\n"
            "  # a stale comment above a key\n"
            "  rounds: 4            # stale\n"
            "  mode: 'bracket'  # stale\n"
            "\n"
            "  # my own note, set apart by a blank line: kept\n"
            "\n"
            "  sizes:\n"
            "    - 32               # my nested comment: kept\n"
            "    - 64\n")
    out = docs.params_with_comments(user, FAKE)
    assert out.startswith("# my header, kept\n\nrefine:")
    assert "  # my own note, set apart by a blank line: kept\n" in out and "    - 32               # my nested comment: kept\n" in out
    assert "stale" not in out
    values = yaml.safe_load(out)
    assert values == {"refine": {"rounds": 4, "mode": "bracket", "sizes": [32, 64], "ratio": 1.0e-3},
                      "other": {"flag": True}}
    comments = comments_by_key(out)
    assert comments["refine.rounds"] == "refinement rounds after the first grid"
    assert comments["refine.ratio"] == " ".join(_Refine.__dataclass_fields__["ratio"].metadata["help"].split())
    assert comments["other.flag"] == "a flag in a section the file lacks"
    assert all(len(line) <= docs.MAX_LINE for line in out.splitlines())
    assert docs.params_with_comments(out, FAKE) == out, "regenerating must change nothing"


def test_a_hash_inside_quotes_is_a_value_not_a_comment():
    assert docs.split_comment("  name: 'a#b'  # c") == ("  name: 'a#b'", "c")
    assert docs.split_comment('  name: "x #y"') == ('  name: "x #y"', None)
    assert docs.split_comment("  name: a#b") == ("  name: a#b", None)
    out = docs.params_with_comments("refine:\n  mode: 'golden#1'   # old\n", FAKE)
    assert yaml.safe_load(out)["refine"]["mode"] == "golden#1"


def test_a_section_written_inline_keeps_its_value():
    out = docs.params_with_comments("other: {flag: false}   # old\n", FAKE)
    assert out.startswith("other: {flag: false}")
    assert yaml.safe_load(out) == {"other": {"flag": False}, "refine": yaml.safe_load(out)["refine"]}
    assert docs.params_with_comments(out, FAKE) == out


@pytest.mark.parametrize("text, named", [("refine:\n  round: 2\n", "refine.round"),
                                         ("refinement:\n  rounds: 2\n", "refinement")])
def test_an_unknown_key_is_refused_with_its_name(text, named):
    with pytest.raises(ConfigError, match=f"{named}: unknown"):
        docs.params_with_comments(text, FAKE)


def test_check_fails_on_drift_and_names_the_command_that_regenerates(tmp_path):
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(ROOT / "docs/settings.md", tmp_path / "docs/settings.md")
    check = [sys.executable, "-m", "stages.pipeline.docs", "--check", "--root", str(tmp_path)]
    assert run(check, ROOT, check=False).returncode == 0

    params = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(params.replace("# SGD momentum (fixed)", "# momentum, hand-edited"))
    table = (tmp_path / "docs/settings.md").read_text()
    (tmp_path / "docs/settings.md").write_text(table.replace("SGD momentum (fixed)", "hand-edited"))
    proc = run(check, ROOT, check=False)
    assert proc.returncode == 1
    assert f"params.yaml has drifted from the schema (stages/core/config.py): run `{REGENERATE}`" in proc.stderr
    assert f"settings.md has drifted from the schema (stages/core/config.py): run `{REGENERATE}`" in proc.stderr

    run([sys.executable, "-m", "stages.pipeline.docs", "--root", str(tmp_path)], ROOT)
    assert (tmp_path / "params.yaml").read_text() == params
    assert (tmp_path / "docs/settings.md").read_text() == table
    assert run(check, ROOT, check=False).returncode == 0


def test_the_workers_measurement_is_described_as_the_code_does_it():
    """Issue 21 parts 1 and 3: throughput, dataset, select and baseline docs say that the workers are measured
    first (persistent across epochs where the Dataset allows), every size is then timed with the recommended
    setting that select writes, and a too-noisy measurement falls back to data.num_workers -- with the
    numbers of stages/throughput/workers.py."""
    from stages.throughput import workers

    def flat(name: str) -> str:
        return " ".join((ROOT / "docs" / name).read_text().split())

    throughput = flat("throughput.md")
    assert "**measures the loader's workers first**" in throughput and "then times every size with the recommended setting" in throughput
    assert f"wider than +-{workers.NOISY_HALF_WIDTH:.0%} of its median" in throughput
    assert f"at least one epoch (up to {workers.EPOCH_WINDOW_CAP} steps)" in throughput and "`set_epoch`" in throughput
    for name in ("dataset.md", "select.md", "baseline.md"):
        text = flat(name)
        assert "too noisy to rank" in text and "`data.num_workers`" in text, name
        assert "persistent" in text and "initial_config.yaml" in text, name


def test_params_yaml_as_an_experiment_left_it_is_put_back_by_the_one_command(tmp_path):
    """Issue 28 part 3: `dvc exp run -S` (and `dvc exp apply`) re-serialise params.yaml -- every list a block
    at its key's indent, null an empty value -- so the drift check fails after committing an experiment;
    `python -m stages.pipeline.docs` restores the generated form in one command, with the new value."""
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` writes into params.yaml

    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs/settings.md", tmp_path / "docs/settings.md")
    original = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(original)
    apply_overrides(tmp_path / "params.yaml", ["select.step_budget_margin=1.5"])
    rewritten = (tmp_path / "params.yaml").read_text()
    assert "  candidates:\n  - hidden:\n    - 16\n" in rewritten and "  batch_size:\n" in rewritten  # DVC's form
    check = [sys.executable, "-m", "stages.pipeline.docs", "--check", "--root", str(tmp_path)]
    assert run(check, ROOT, check=False).returncode == 1
    run([sys.executable, "-m", "stages.pipeline.docs", "--root", str(tmp_path)], ROOT)
    assert run(check, ROOT, check=False).returncode == 0
    assert (tmp_path / "params.yaml").read_text() == original.replace("step_budget_margin: 1.2", "step_budget_margin: 1.5")
