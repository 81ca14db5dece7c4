"""The layout holds: imports point down only (``cmpdata`` needs neither Ray, nor ``pipelines``,
nor ``cmpmodel``), no import cycle inside ``cmpdata``, and the README's Python snippets,
module names and file paths are the code's."""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_dataset import make_dataset

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_cmpdata_imports_neither_ray_nor_the_layers_above():
    script = """
import importlib, json, pkgutil, sys
import cmpdata
names = [m.name for m in pkgutil.walk_packages(cmpdata.__path__, "cmpdata.")]
for name in names:
    importlib.import_module(name)
above = sorted({m.split(".")[0] for m in sys.modules} & {"ray", "pipelines", "cmpmodel"})
print(json.dumps({"modules": len(names), "above": above}))
"""
    command = [sys.executable, "-c", script]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["modules"] > 30 and found["above"] == []


def imports_of(path: Path, package: str) -> set[str]:
    """The ``package`` modules that the module at ``path`` imports, anywhere in it (inside
    functions too), resolved to modules (``from a.b import c`` is ``a.b.c`` when that is a
    module, else ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] != package:
                continue
            file = REPO / name.replace(".", "/")
            if file.with_suffix(".py").is_file() or (file / "__init__.py").is_file():
                found.add(name)
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycle_inside_cmpdata():
    graph = {module_name(p): imports_of(p, "cmpdata") for p in (REPO / "cmpdata").rglob("*.py")}
    assert len(graph) > 30
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for child in sorted(graph.get(node, ())):
            if child == node:
                continue
            if state.get(child) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(child) :], child]))
            if child not in state:
                visit(child, [*path, child])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_readme_names_and_paths_exist():
    names = set(re.findall(r"\b((?:cmpdata|pipelines|cmpmodel)(?:\.[A-Za-z_]\w*)+)", README))
    assert len(names) >= 8
    for name in sorted(names):
        module, _, attribute = name.rpartition(".")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module), attribute), name
    tree = r"\b((?:cmpdata|pipelines|cmpmodel|benchmarks|tests)/[\w/.-]*\w)"
    paths = set(re.findall(tree, README))
    assert len(paths) >= 10
    made_at_run_time = {  # the anchored entries of .gitignore (e.g. tests/data/, filled by tests)
        line.strip("/") for line in (REPO / ".gitignore").read_text().split() if line[0] == "/"
    }
    missing = sorted(
        p
        for p in paths
        if not (REPO / p).exists() and "*" not in p and p.rstrip("/") not in made_at_run_time
    )
    assert missing == []


def test_the_readme_python_snippets_run(tmp_path, real_clips):
    make_dataset(tmp_path / "DIR")
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "bikes.mp4").symlink_to(real_clips["bikes"])
    snippets = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(snippets) >= 3
    for snippet in snippets:
        code = snippet.replace('"DIR/', f'"{tmp_path}/DIR/').replace('"videos/"', f'"{videos}"')
        # Each snippet on its own, as a reader would paste it.
        command = [sys.executable, "-c", code]
        proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, f"{snippet}\n{proc.stderr[-2000:]}"
