"""Each setting is documented once, in the schema (`help=` of each `setting` in stages/core/config.py);
the settings reference and the comments of params.yaml are generated from it.

    python -m stages.pipeline.docs            # rewrite docs/settings.md and params.yaml's comments
    python -m stages.pipeline.docs --check    # exit 1 naming each file that drifted from the schema

params.yaml keeps the user's values, order, blank lines and free comments (the header, comments
between sections or set apart by a blank line, anything nested deeper than a section's keys, such as
`workload.kwargs`); a section's same-line comment and each key's same-line comment and the comment
lines directly above it are the schema's. A key
the schema has but the file lacks is added with its default, so the file lists every setting.

After `dvc exp run -S ...` / `dvc exp apply`, params.yaml is as DVC re-serialised it: every list a
block under its key (at the key's own indent), every null an empty value. The same command puts it
back in the generated form -- a list of plain values on one line, a list of mappings one `- {...}`
per line, `null` spelled out -- wherever no comment sits inside the list; the values do not change.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from stages.core.config import PARAMS_FILE, SECTIONS, allowed_range
from stages.core.errors import ConfigError
from stages.core.yamlfile import parse

SETTINGS_DOC = "docs/settings.md"
COMMAND = "python -m stages.pipeline.docs"
COMMENT_COLUMN = 28  # same-line comments start here when the key and value are shorter
MAX_LINE = 120       # longer than this with its comment: the comment goes on the line(s) above the key
WRAP = 100           # ... wrapped to this width


# ---------------------------------------------------------------------------- what the schema says

def section_doc(cls: type) -> str | None:
    """A section's own docstring; None for the signature text @dataclass writes when there is none."""
    doc = (cls.__doc__ or "").strip()
    return None if not doc or doc.startswith(f"{cls.__name__}(") else " ".join(doc.split())


def yaml_value(value: Any) -> str:
    """A value as params.yaml spells it, on one line (floats keep a decimal point: 1.0e-08)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


def type_label(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "choice"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_label(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {type_label(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return {int: "int", float: "float", bool: "bool", str: "str", dict: "mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _literal_choices(tp: Any) -> list[Any]:
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [c for arm in typing.get_args(tp) for c in _literal_choices(arm)]
    return []


def allowed_text(tp: Any, meta: dict) -> str:
    """What the validator accepts beyond the type: choices, the range, what a custom check allows."""
    parts = []
    choices = _literal_choices(tp)
    if choices:
        parts.append(", ".join(f"`{yaml_value(c)}`" for c in choices))
    rng = allowed_range(meta)
    if rng:
        parts.append(rng)
    check = meta.get("check")
    if check is not None:
        parts.append(" ".join((check.__doc__ or "further restricted: see the meaning").split()))
    return "; ".join(parts) or "any"


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in _current(cls)]


def _current(cls: type) -> list[dataclasses.Field]:
    """The section's settings less the deprecated ones (accepted, never written into a generated file)."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("deprecated")]


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _help(f: dataclasses.Field, section: str) -> str:
    text = " ".join(str(f.metadata.get("help") or "").split())
    if not text:  # a setting without its meaning would leave a hole in every generated file
        raise ConfigError(f"{section}.{f.name}: no help= in stages/core/config.py; allowed: a setting(default, help, ...) "
                          "saying what it means and its unit")
    return text


# ---------------------------------------------------------------------------- docs/settings.md

def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_markdown(sections: dict[str, type] = SECTIONS) -> str:
    lines = ["# Settings (`params.yaml`)", "",
             f"<!-- Generated from stages/core/config.py by `{COMMAND}`: edit the schema, not this file. -->", "",
             "`params.yaml` is the only configuration; every key below is optional (the default applies) and",
             "the whole file is validated before any work: an unknown key, a wrong type or a value outside",
             "*allowed* stops a stage with one line naming the key. `python -m stages` prints the resolved",
             "values. DVC and Snakemake both see it through kickoff's one YAML reader, by YAML 1.2's rules (as",
             "DVC reads YAML): `1e-3` is a number, `yes` and `no` are words (write `true`, `false`), and a key",
             "given twice is refused.", ""]
    for name, cls in sections.items():
        lines += [f"## `{name}`", ""]
        doc = section_doc(cls)
        if doc:
            lines += [doc, ""]
        lines += ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for f, tp in _fields(cls):
            lines.append(f"| `{name}.{f.name}` | {_cell(type_label(tp))} | `{_cell(yaml_value(_default(f)))}` "
                         f"| {_cell(allowed_text(tp, f.metadata))} | {_cell(_help(f, name))} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- params.yaml comments

def split_comment(line: str) -> tuple[str, str | None]:
    """('  key: value', 'comment') -- a '#' starts a comment only outside quotes and after whitespace."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _with_comment(code: str, comment: str | None, indent: int) -> list[str]:
    """`code  # comment` aligned, or the comment wrapped on the lines above when too long."""
    if not comment:
        return [code]
    same_line = f"{code.ljust(COMMENT_COLUMN - 1)} # {comment}"
    if len(same_line) <= MAX_LINE:
        return [same_line]
    pad = " " * indent
    return textwrap.wrap(comment, WRAP, initial_indent=pad + "# ", subsequent_indent=pad + "# ") + [code]


def _drop_own(pending: list[str], indent: int) -> None:
    """Drop the comment lines at `indent` directly above a section or key (ending the block): they are its
    generated comment. Lines above them at another indent are the user's."""
    while pending and _indent(pending[-1]) == indent:
        pending.pop()


def _key_of(code: str) -> str | None:
    head, sep, _ = code.strip().partition(":")
    return head if sep and head and " " not in head and not head.startswith(("-", "#")) else None


_EMPTY_KEY = re.compile(r"^(\s*)([A-Za-z_][\w.-]*):$")  # `  key:` with nothing after it (comments split off)


def _continuation(lines: list[str], start: int, indent: int) -> int:
    """The end of the value lines below a key at `indent` that start at `start`: deeper lines, and `- `
    items at the key's own indent (DVC writes block lists so); a blank or comment-only line ends it."""
    end = start
    while end < len(lines):
        code, _ = split_comment(lines[end])
        if not code.strip():
            break
        ind = _indent(lines[end])
        if ind > indent or (ind == indent and code.strip().startswith("- ")):
            end += 1
            continue
        break
    return end


def compact(text: str) -> str:
    """DVC's rewrite of params.yaml (`dvc exp run -S`, `dvc exp apply`) put back in the generated form:
    an empty value is `null`, a block list of plain values one flow list, a block list of mappings one
    `- {...}` line per item -- where no comment sits inside it and the line fits; values unchanged."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        code, comment = split_comment(line)
        m = _EMPTY_KEY.match(code)
        if not m or not m.group(1):  # not an indented `key:` without a value (a section line stays as it is)
            out.append(line)
            i += 1
            continue
        indent = len(m.group(1))
        end = _continuation(lines, i + 1, indent)
        block = lines[i + 1:end]
        if not block:  # DVC writes null as nothing
            out.extend(_with_comment(f"{code} null", comment, indent))
            i += 1
            continue
        if any(split_comment(b)[1] is not None for b in block):
            out.append(line)
            i += 1
            continue
        try:
            value = parse("\n".join(["v:", *(b[indent:] for b in block)]))["v"]
        except Exception:  # noqa: BLE001 - not a value this can read alone: left as it is
            value = None
        if isinstance(value, list) and value and all(not isinstance(v, (list, dict)) for v in value):
            flat = _with_comment(f"{code} {yaml_value(value)}", comment, indent)
            if all(len(ln) <= MAX_LINE for ln in flat):
                out.extend(flat)
                i = end
                continue
        elif isinstance(value, list) and value:
            items = [f"{' ' * (indent + 2)}- {yaml_value(v)}" for v in value]
            if all(len(ln) <= MAX_LINE for ln in items):
                out.extend([*_with_comment(code, comment, indent), *items])
                i = end
                continue
        out.append(line)  # a mapping (its own keys are looked at next) or a list that does not fit
        i += 1
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def params_with_comments(text: str, sections: dict[str, type] = SECTIONS, source: str = PARAMS_FILE) -> str:
    """params.yaml's text with every schema comment regenerated (in the generated form: `compact`);
    values and free comments are the user's."""
    lines = compact(text).splitlines()
    out: list[str] = []
    pending: list[str] = []   # comment-only lines right above the next line: its comment, or free text
    section: str | None = None
    key_indent: int | None = None
    seen: dict[str, list[str]] = {}
    indents: dict[str, int] = {}      # each section's key indent, for the keys added below
    inline: set[str] = set()
    section_end: dict[str, int] = {}  # index in `out` after the section's last key (and its nested lines)

    def flush_pending() -> None:
        out.extend(pending)
        pending.clear()

    for line in lines:
        code, comment = split_comment(line)
        stripped = code.strip()
        indent = _indent(line)
        if not stripped:
            if comment is not None:
                pending.append(line)  # the next section's or key's comment if it follows directly
            else:
                flush_pending()
                out.append(line)
            continue
        if indent == 0:  # a section (or something the schema does not know)
            _drop_own(pending, 0)
            flush_pending()
            name = _key_of(code)
            if name not in sections:
                raise ConfigError(f"{source}: {name or stripped}: unknown section; allowed sections: {', '.join(sections)}")
            if name in seen:
                raise ConfigError(f"{source}: {name}: section appears twice; allowed: each section once")
            section, key_indent = name, None
            seen[name] = []
            if code.partition(":")[2].strip():  # written inline (`baseline: {}`): no key lines can follow it
                inline.add(name)
            out.extend(_with_comment(code, section_doc(sections[name]), 0))
            section_end[name] = len(out)
            continue
        if section is None:
            raise ConfigError(f"{source}: line {line!r} is indented before any section; allowed: keys inside a section")
        if key_indent is None:
            key_indent = indents[section] = indent
        if indent > key_indent or stripped.startswith("- "):  # nested in the previous key's value (e.g.
            # workload.kwargs, or a block list DVC wrote at the key's own indent): the user's
            flush_pending()
            out.append(line)
            section_end[section] = len(out)
            continue
        key = _key_of(code)
        fields = {f.name: f for f in dataclasses.fields(sections[section])}
        if indent < key_indent or key not in fields:
            raise ConfigError(f"{source}: {section}.{key or stripped}: unknown key; allowed keys in '{section}': "
                              f"{', '.join(fields)}")
        _drop_own(pending, indent)  # the key's old comment lines: regenerated below
        flush_pending()
        seen[section].append(key)
        out.extend(_with_comment(code, _help(fields[key], section), indent))
        section_end[section] = len(out)
    flush_pending()

    # settings the file lacks: added with their defaults, after the section's last key
    for name in reversed([n for n in seen if n not in inline]):
        cls, indent = sections[name], indents.get(name, 2)
        missing = [f for f in _current(cls) if f.name not in seen[name]]
        added = [ln for f in missing
                 for ln in _with_comment(f"{' ' * indent}{f.name}: {yaml_value(_default(f))}", _help(f, name), indent)]
        out[section_end[name]:section_end[name]] = added
    for name, cls in sections.items():
        if name not in seen:
            out += ["", *_with_comment(f"{name}:", section_doc(cls), 0)]
            out += [ln for f in _current(cls)
                    for ln in _with_comment(f"  {f.name}: {yaml_value(_default(f))}", _help(f, name), 2)]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- command line

def generated(root: Path) -> dict[Path, str]:
    """Each generated file under `root` -> the text it should have."""
    params = root / PARAMS_FILE
    if not params.exists():
        raise ConfigError(f"{params}: file not found; run from the project root (where params.yaml is) or pass --root")
    return {root / SETTINGS_DOC: settings_markdown(), params: params_with_comments(params.read_text(), source=str(params))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated file differs from the schema")
    ap.add_argument("--root", type=Path, default=Path.cwd(), help="project root holding params.yaml and docs/")
    args = ap.parse_args(argv)
    files = generated(args.root)
    if args.check:
        stale = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
        for path in stale:
            print(f"{path} has drifted from the schema (stages/core/config.py): run `{COMMAND}`", file=sys.stderr)
        return 1 if stale else 0
    from stages.core.io import write_text

    for path, text in files.items():
        if not path.exists() or path.read_text() != text:
            write_text(path, text)
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from stages.core.cli import run_main

    run_main(lambda: sys.exit(main()), "docs")
