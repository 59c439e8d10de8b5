"""kickoff's one YAML reader, for params.yaml, the profiles and every file kickoff parses: DVC and
Snakemake only ever see the values through it, so a value is accepted or refused alike by both.

The rules are YAML 1.2's core schema -- what DVC reads -- and not PyYAML's (and Snakemake's
`configfile:`) YAML 1.1: `1e-3` is a number, `yes`/`no`/`on`/`off` are words (write `true`/`false`),
`010` is ten, and a date stays the text it is. A key given twice in one mapping is refused with its
path and both lines (PyYAML silently keeps the last; DVC refuses the file).

`dump` writes values back so that both YAML 1.1 and 1.2 readers read them as written: a string
either would take for something else (`'1e-3'`, `'yes'`, `'1_000'`) is quoted.
"""
from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.resolver import BaseResolver, Resolver

from stages.core.errors import ConfigError

try:  # libyaml's parser where PyYAML has it: 10x faster; the resolving and constructing below are ours
    from yaml.cyaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.composer import Composer
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser, Composer):  # type: ignore[no-redef]
        def __init__(self, stream):
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            Composer.__init__(self)

# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution)
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")


class _Resolver12(BaseResolver):
    """Plain scalars resolved as YAML 1.2's core schema does (the order matters: int before float)."""


_Resolver12.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in (("tag:yaml.org,2002:bool", _BOOL, "tTfF"),
                              ("tag:yaml.org,2002:int", _INT, "-+0123456789"),
                              ("tag:yaml.org,2002:float", _FLOAT, "-+0123456789."),
                              ("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""])):
    _Resolver12.add_implicit_resolver(_tag, _regexp, list(_first))


class _Constructor12(SafeConstructor):
    def construct_yaml_int(self, node):  # 1.2: '010' is ten (1.1: eight), 0o17 octal, 0x1f hex
        text = self.construct_scalar(node)
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text, 10)


_Constructor12.add_constructor("tag:yaml.org,2002:int", _Constructor12.construct_yaml_int)


class Loader(_Parser, _Constructor12, _Resolver12):
    def __init__(self, stream):
        _Parser.__init__(self, stream)
        _Constructor12.__init__(self)
        _Resolver12.__init__(self)


def _check_unique(node: yaml.Node, path: str) -> None:
    """ConfigError for the first mapping key given twice, naming its path and both lines."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            full = f"{path}.{name}" if path and name is not None else (name or path)
            if name is not None:
                if name in seen:
                    raise ConfigError(f"{full}: given twice (lines {seen[name]} and {key.start_mark.line + 1}); "
                                      f"allowed: each key once (which one would count is not obvious, and DVC "
                                      f"refuses the file)")
                seen[name] = key.start_mark.line + 1
            _check_unique(value, str(full))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique(item, f"{path}[{i}]")


def parse(text: str) -> Any:
    """The document in `text` read by kickoff's rules; yaml.YAMLError for bad syntax, ConfigError
    (naming the key) for a key given twice."""
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_unique(node, "")
        return loader.construct_document(node)
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------- writing

class _EitherResolver(Resolver):
    """YAML 1.1's resolver with 1.2's number forms added: a string that reads as anything but a
    string under either is quoted when dumped."""


for _tag, _regexp, _first in (("tag:yaml.org,2002:int", _INT, "-+0123456789"),
                              ("tag:yaml.org,2002:float", _FLOAT, "-+0123456789.")):
    _EitherResolver.add_implicit_resolver(_tag, _regexp, list(_first))


class Dumper(yaml.emitter.Emitter, yaml.serializer.Serializer, yaml.representer.SafeRepresenter, _EitherResolver):
    def __init__(self, stream, **kw):
        yaml.emitter.Emitter.__init__(self, stream, canonical=kw.get("canonical"), indent=kw.get("indent"),
                                      width=kw.get("width"), allow_unicode=kw.get("allow_unicode"),
                                      line_break=kw.get("line_break"))
        yaml.serializer.Serializer.__init__(self, encoding=kw.get("encoding"), explicit_start=kw.get("explicit_start"),
                                            explicit_end=kw.get("explicit_end"), version=kw.get("version"),
                                            tags=kw.get("tags"))
        yaml.representer.SafeRepresenter.__init__(self, default_style=kw.get("default_style"),
                                                  default_flow_style=kw.get("default_flow_style", False),
                                                  sort_keys=kw.get("sort_keys", True))
        _EitherResolver.__init__(self)


class _BlockDumper(Dumper):
    """Mappings in block style, a list of plain values on one line: `batch_sizes: [4, 8, 16]`."""

    def represent_list(self, data):
        flat = all(not isinstance(item, (list, dict)) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_BlockDumper.add_representer(list, _BlockDumper.represent_list)


def dump(data: Any, *, block: bool = False, **kw: Any) -> str:
    """`data` as YAML that YAML 1.1 and 1.2 readers read back alike (yaml.dump's keyword arguments);
    `block`: mappings in block style, lists of plain values on one line."""
    return yaml.dump(data, Dumper=_BlockDumper if block else Dumper, **kw)
