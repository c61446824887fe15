"""The import graph: no cycles in genrec_jax, imports go library <- configs.

Every module is parsed with `ast` (nothing is imported): `import x` and
`from x import y` at module level and inside functions, relative imports
resolved against the module's package. `from pkg import name` is an edge to
the submodule `pkg.name` when that is a module, else to `pkg`. Imports under
`if TYPE_CHECKING:` never run and are left out.

* genrec_jax has no import cycle (function-level imports count: they hide
  the cycle from Python, not from the design).
* No genrec_jax module imports `configs` or `binaries`.
* No `configs/*.py` pulls jax/flax/optax/orbax in at import time, checked
  on the module-level graph (with the parent packages Python runs) and by
  importing each config in a subprocess.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Heavy libraries a config must not import at module level.
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax")
# Top-level packages a library module must not import.
NOT_FROM_LIBRARY = ("configs", "binaries")


@dataclasses.dataclass(frozen=True)
class Import:
  """One imported name of an import statement."""
  # Absolute dotted name: `import a.b` -> "a.b"; `from a import b` -> "a.b"
  # (b may be a submodule or an attribute of a).
  name: str
  # For `from a import b`: "a", the module imported when a.b is no module.
  base: str | None
  # The file and line of the statement.
  path: pathlib.Path
  lineno: int
  # False for imports inside a function body.
  module_level: bool


def module_names(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for `root/package/**.py`."""
  out = {}
  for f in sorted((root / package).rglob("*.py")):
    parts = list(f.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = f
  return out


def _is_type_checking(node: ast.If) -> bool:
  t = node.test
  return ((isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or
          (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"))


def raw_imports(path: pathlib.Path, module: str) -> list[Import]:
  """Every import in a file, absolute (relative ones resolved)."""
  is_package = path.name == "__init__.py"
  package = module if is_package else module.rpartition(".")[0]
  out: list[Import] = []

  def visit(node: ast.AST, in_function: bool) -> None:
    for child in ast.iter_child_nodes(node):
      if isinstance(child, ast.If) and _is_type_checking(child):
        for sub in child.orelse:
          visit_one(sub, in_function)
      else:
        visit_one(child, in_function)

  def visit_one(node: ast.AST, in_function: bool) -> None:
    if isinstance(node, ast.Import):
      for alias in node.names:
        out.append(Import(alias.name, None, path, node.lineno,
                          not in_function))
    elif isinstance(node, ast.ImportFrom):
      base = node.module
      if node.level:
        parts = package.split(".")
        if node.level > len(parts):
          raise ValueError(f"{path}:{node.lineno}: relative import beyond "
                           "the top-level package")
        base = ".".join(parts[:len(parts) - node.level + 1] +
                        ([node.module] if node.module else []))
      for alias in node.names:
        name = base if alias.name == "*" else f"{base}.{alias.name}"
        out.append(Import(name, base, path, node.lineno, not in_function))
    else:
      visit(node, in_function or isinstance(
          node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

  visit(ast.parse(path.read_text(), str(path)), False)
  return out


def _resolve(imp: Import, known: dict[str, pathlib.Path]) -> str | None:
  """The module an import loads last: `name` when it is a module, else the
  longest known module that `name` (for `import`) or `base` (for `from`)
  is or lies in; None when outside the parsed packages."""
  if imp.name in known:
    return imp.name
  parts = (imp.name if imp.base is None else imp.base).split(".")
  for n in range(len(parts), 0, -1):
    if ".".join(parts[:n]) in known:
      return ".".join(parts[:n])
  return None


def build_graph(root: pathlib.Path, packages: tuple[str, ...],
                module_level_only: bool = False
                ) -> tuple[dict[str, dict[str, Import]],
                           dict[str, list[Import]]]:
  """The import graph of `packages` under `root`.

  Args:
    root: the folder holding the packages.
    packages: top-level package names to parse.
    module_level_only: leave out imports inside functions.

  Returns:
    (graph, external): graph[a][b] = the first statement of module a that
    imports module b (both in `packages`; no self edges); external[a] = a's
    imports of modules outside them.
  """
  known: dict[str, pathlib.Path] = {}
  for p in packages:
    known.update(module_names(root, p))
  graph: dict[str, dict[str, Import]] = {m: {} for m in known}
  external: dict[str, list[Import]] = {m: [] for m in known}
  for module, path in known.items():
    for imp in raw_imports(path, module):
      if module_level_only and not imp.module_level:
        continue
      target = _resolve(imp, known)
      if target is None:
        external[module].append(imp)
      elif target != module:
        graph[module].setdefault(target, imp)
  return graph, external


def find_cycles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
  """One cycle [a, b, ..., a] per strongly connected component (Tarjan)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  sccs: list[list[str]] = []

  def strongconnect(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        strongconnect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      scc = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        scc.append(w)
        if w == v:
          break
      if len(scc) > 1:
        sccs.append(sorted(scc))

  for v in sorted(graph):
    if v not in index:
      strongconnect(v)
  cycles = []
  for scc in sccs:  # shortest cycle through the SCC's first module (BFS)
    members, start = set(scc), scc[0]
    parent = {start: None}
    queue, found = [start], None
    while queue and found is None:
      v = queue.pop(0)
      for w in sorted(graph[v]):
        if w == start:
          found = v
          break
        if w in members and w not in parent:
          parent[w] = v
          queue.append(w)
    path = [start]
    v = found
    while v is not None and v != start:
      path.append(v)
      v = parent[v]
    cycles.append([start] + path[1:][::-1] + [start])
  return sorted(cycles)


def format_cycle(graph: dict[str, dict[str, Import]], cycle: list[str],
                 root: pathlib.Path) -> str:
  lines = [" -> ".join(cycle)]
  for a, b in zip(cycle, cycle[1:]):
    imp = graph[a][b]
    where = "" if imp.module_level else " (inside a function)"
    lines.append(f"  {imp.path.relative_to(root)}:{imp.lineno} imports "
                 f"{b}{where}")
  return "\n".join(lines)


def reachable(graph: dict[str, dict[str, Import]], start: str
              ) -> dict[str, list[str]]:
  """module -> import chain from `start`, over the graph plus parent
  packages (importing a.b.c runs a/__init__ and a/b/__init__ first)."""
  chains = {start: [start]}
  queue = [start]
  while queue:
    v = queue.pop(0)
    nexts = list(graph[v])
    for w in [v, *nexts]:
      parts = w.split(".")
      nexts += [".".join(parts[:n]) for n in range(1, len(parts))]
    for w in nexts:
      if w in graph and w not in chains:
        chains[w] = chains[v] + [w]
        queue.append(w)
  return chains


# ---------------------------------------------------------------------------
# The graph builder on a synthetic package.


def _write(root: pathlib.Path, files: dict[str, str]) -> None:
  for name, text in files.items():
    f = root / name
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(textwrap.dedent(text))


def test_graph_builder_finds_a_synthetic_cycle(tmp_path):
  _write(tmp_path, {
      "pkg/__init__.py": "from pkg.sub import b  # package re-export\n",
      "pkg/a.py": "import os\nfrom . import util\nfrom .sub.b import thing\n",
      "pkg/util.py": "from typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n  from pkg import a\n",
      "pkg/sub/__init__.py": "",
      "pkg/sub/b.py": """\
          import numpy as np
          thing = 1
          def f():
            from ..c import helper  # a function-level import still counts
            return helper
          """,
      "pkg/c.py": "import pkg.a\nfrom pkg.sub import b as _b\n",
  })
  graph, external = build_graph(tmp_path, ("pkg",))
  assert graph["pkg.a"].keys() == {"pkg.util", "pkg.sub.b"}
  assert graph["pkg.util"] == {}  # TYPE_CHECKING import left out
  assert graph["pkg.sub.b"].keys() == {"pkg.c"}
  assert not graph["pkg.sub.b"]["pkg.c"].module_level
  assert graph["pkg.c"].keys() == {"pkg.a", "pkg.sub.b"}
  assert graph["pkg"].keys() == {"pkg.sub.b"}
  assert {i.name for i in external["pkg.a"]} == {"os"}
  cycles = find_cycles(graph)
  assert cycles == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
  text = format_cycle(graph, cycles[0], tmp_path)
  assert "pkg/sub/b.py:4 imports pkg.c (inside a function)" in text, text
  # Module level only: the function-level edge goes, and with it the cycle.
  graph, _ = build_graph(tmp_path, ("pkg",), module_level_only=True)
  assert find_cycles(graph) == []


def test_graph_builder_parent_packages_and_relative_imports(tmp_path):
  _write(tmp_path, {
      "cfg/__init__.py": "",
      "cfg/light.py": "from lib.util import helpers\n",
      "lib/__init__.py": "from . import heavy\n",
      "lib/heavy.py": "import jax.numpy as jnp\n",
      "lib/util/__init__.py": "",
      "lib/util/helpers.py": "import json\n",
  })
  graph, external = build_graph(tmp_path, ("cfg", "lib"),
                                module_level_only=True)
  chains = reachable(graph, "cfg.light")
  # lib/__init__ runs before lib.util.helpers, and it imports jax.
  assert chains["lib.heavy"] == ["cfg.light", "lib", "lib.heavy"]
  assert [i.name for i in external["lib.heavy"]] == ["jax.numpy"]
  with pytest.raises(ValueError, match="beyond the top-level package"):
    _write(tmp_path, {"lib/bad.py": "from ... import x\n"})
    build_graph(tmp_path, ("lib",))


# ---------------------------------------------------------------------------
# The project.


def test_genrec_jax_has_no_import_cycle():
  graph, _ = build_graph(REPO, ("genrec_jax",))
  cycles = find_cycles(graph)
  assert not cycles, "import cycles in genrec_jax:\n" + "\n".join(
      format_cycle(graph, c, REPO) for c in cycles)


def test_library_never_imports_configs_or_binaries():
  _, external = build_graph(REPO, ("genrec_jax",))
  bad = [f"{i.path.relative_to(REPO)}:{i.lineno} imports {i.name}"
         for imports in external.values() for i in imports
         if i.name.split(".")[0] in NOT_FROM_LIBRARY]
  assert not bad, "genrec_jax must not import configs/binaries:\n" + (
      "\n".join(sorted(set(bad))))


def _config_modules() -> list[str]:
  return sorted(m for m in module_names(REPO, "configs") if m != "configs")


def test_configs_import_no_jax_at_module_level_ast():
  graph, external = build_graph(REPO, ("configs", "genrec_jax"),
                                module_level_only=True)
  bad = []
  for config in _config_modules():
    for module, chain in reachable(graph, config).items():
      for i in external[module]:
        if i.name.split(".")[0] in HEAVY:
          bad.append(f"{' -> '.join(chain)}: "
                     f"{i.path.relative_to(REPO)}:{i.lineno} imports {i.name}")
  assert not bad, "configs must not import jax/flax/optax/orbax at import " \
      "time:\n" + "\n".join(sorted(set(bad)))


def test_configs_import_no_jax_at_module_level_subprocess():
  script = textwrap.dedent(f"""\
      import importlib, json, sys
      heavy = {HEAVY!r}
      out = {{}}
      for name in {_config_modules()!r}:
        importlib.import_module(name)
        out[name] = sorted(m for m in sys.modules if m in heavy)
      print(json.dumps(out))
      """)
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  loaded = json.loads(proc.stdout.strip().splitlines()[-1])
  # Imports are cumulative in one process: the first config that shows a
  # heavy module is the one that imported it.
  first = next(((n, m) for n, m in loaded.items() if m), None)
  assert first is None, (f"importing {first[0]} loads {first[1]} (run "
                         f"`python -c 'import {first[0]}'` to see it)")
