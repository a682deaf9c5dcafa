"""Load YAML configs with a bound on their size once aliases are expanded.

A YAML alias (``*a``) shares its anchor's node, so a few hundred bytes of nested aliases (the "billion laughs"
file) build a structure with billions of elements: loading is instant, but whatever walks it next (copying the
config, hashing it into the run key, printing it) never finishes. The composed node graph is measured first,
each shared node once, so the check is as cheap as the parse; recursive aliases are refused too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, not_a_file

MAX_VALUES = 100_000  # far above any real run config or suite; far below what hangs a copy or a hash


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def expanded_size(root: yaml.Node, where: str, limit: int = MAX_VALUES) -> int:
    """How many values the document holds with every alias expanded (stops counting past ``limit``)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # started, children not finished: meeting one again means a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        k = id(node)
        if finished:
            open_nodes.discard(k)
            sizes[k] = min(limit + 1, 1 + sum(sizes[id(c)] for c in _children(node)))
            continue
        if k in sizes:
            continue
        if k in open_nodes:
            raise ConfigError(f"{where}, line {node.start_mark.line + 1}: a YAML alias refers to a value that "
                              "contains it; a config cannot be recursive.")
        open_nodes.add(k)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def load_bounded(loader: yaml.SafeLoader, where: str, limit: int = MAX_VALUES) -> Any:
    """``loader.get_single_data()``, refusing a document that expands past ``limit`` values or nests too deep.

    The caller keeps handling ``yaml.YAMLError`` and disposing of the loader.
    """
    try:
        node = loader.get_single_node()
    except RecursionError:
        raise ConfigError(f"{where}: the YAML is nested too deeply to read; flatten it.") from None
    if node is None:
        return None
    size = expanded_size(node, where, limit)
    if size > limit:
        raise ConfigError(f"{where}: the YAML expands to more than {limit:,} values once its aliases (*name) are "
                          "expanded; write the values out or use fewer aliases.")
    return loader.construct_document(node)


def read_yaml(path: Path, what: str, loader_cls: type[yaml.SafeLoader] = yaml.SafeLoader) -> Any:
    """A YAML file (a run config or a suite) read strictly: it must exist, be UTF-8 and stay within the size
    bound; a syntax error names the file, line and column. Every problem is one :class:`ConfigError`."""
    from .textfile import read_text

    if not path.is_file():
        raise not_a_file(what, path)
    loader = loader_cls(read_text(path, what))  # not UTF-8: one line, not a traceback
    loader.name = str(path)
    try:
        return load_bounded(loader, str(path))  # aliases that expand without bound are refused, not walked
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{at}: not valid YAML: {getattr(e, 'problem', e)}.") from None
    finally:
        loader.dispose()
