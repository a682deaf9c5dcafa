"""The layering is a contract (README, "Architecture"; pyproject ``[tool.importlinter]``): import-linter checks it
with no exceptions and every module in a layer; the import graph has no cycle; nothing below the API imports the
package facade; and what the contract cannot say on its own is checked here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _graph():
    return grimp.build_graph("efficientft")


def test_the_layering_contract_holds():
    """`lint-imports` (the same command `make lint` runs) passes: no lower layer imports a higher one, at module
    level, inside a function or under TYPE_CHECKING; methods and tasks never import each other."""
    exe = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout and "KEPT" in done.stdout


def test_the_contract_lists_no_exception_and_names_every_module():
    layers = [c for c in CONTRACTS if c["type"] == "layers"]
    assert layers, "the layers contract is missing from pyproject.toml"
    for c in CONTRACTS:
        assert not c.get("ignore_imports"), f"contract {c['name']!r} lists exceptions: {c['ignore_imports']}"
    assert all(c.get("exhaustive") for c in layers), "a module outside every layer would escape the check"
    declared = "".join(layers[0]["layers"])
    assert "methods | tasks" in declared, "methods and tasks must stay independent"


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    adj = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in adj:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on.add(v)
            if i < len(adj[v]):
                work.append((v, i + 1))
                w = adj[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out


def test_the_import_graph_has_no_cycle():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    class G:
        modules = {"a", "b", "c"}

        @staticmethod
        def find_modules_directly_imported_by(m):
            return {"a": {"b"}, "b": {"a"}, "c": {"a"}}[m]

    assert _cycles(G()) == [["a", "b"]]


def test_nothing_below_the_api_imports_the_package_facade():
    importers = _graph().find_modules_that_directly_import("efficientft")
    below = sorted(m for m in importers if not m.startswith(("efficientft.cli", "efficientft.api",
                                                              "efficientft.__main__")))
    assert below == []
