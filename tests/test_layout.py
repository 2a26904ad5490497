"""The code's shape, checked: no import cycle among tfl's modules (imports inside functions and of the package root
count), and every module says in its first line what it owns."""

import ast
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "tfl"


def module_name(path: Path) -> str:
    return "tfl" if path.stem == "__init__" else f"tfl.{path.stem}"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The tfl modules `path` imports anywhere in its text: at the top, inside functions, under TYPE_CHECKING."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tfl":
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names} & modules
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names} & modules
    return found & modules - {module_name(path)}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the tfl modules it imports; `tfl` (the package root, tfl/__init__.py) is a module like the others."""
    paths = sorted(package.glob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (the first repeated at the end), or None."""
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, trail + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_tfl():
    graph = import_graph()
    assert len(graph) > 15 and graph["tfl.train"] and "tfl.api" in graph["tfl"], "the graph was read, root included"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("planted", ["from tfl import __version__", "import tfl", "from tfl.api import finetune"])
def test_a_cycle_through_the_package_root_planted_inside_a_function_is_found(tmp_path, planted):
    """tfl/__init__ imports tfl.api, which imports tfl.train: train importing the root (or api) closes a cycle."""
    copy = tmp_path / "tfl"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("vendor", "__pycache__"))
    train = copy / "train.py"
    train.write_text(train.read_text() + f"\n\ndef planted():\n    {planted}\n")
    cycle = find_cycle(import_graph(copy))
    assert cycle is not None and "tfl.train" in cycle


def test_every_module_says_what_it_owns():
    for path in sorted(PACKAGE.glob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring and docstring.strip(), f"{path.name} has no docstring"


PLANTED = '''
import subprocess
import sys

import pytest

from tests.conftest import TINY_SETTINGS, write_class_folders


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import tfl

    root = tmp_path_factory.mktemp("planted")
    return tfl.finetune(write_class_folders(root / "data", 4), **TINY_SETTINGS, epochs=(1, 0), output=root / "runs",
                        name="x", echo=lambda s: None, verbose=0)


def test_trains_in_a_module_fixture(trained):
    pass


def test_starts_python():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.integration
def test_marked_may_start_python():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
'''


@pytest.mark.integration  # it starts pytest in a process of its own
def test_a_fast_test_that_trains_or_starts_python_fails_naming_its_tier(tmp_path):
    """The tier guard in tests/conftest.py, on a planted file: a module fixture that trains and a test that starts
    Python fail with the message; the same in a test marked integration passes."""
    import os
    import subprocess
    import sys

    planted = REPO / "tests" / f"_planted_tier_check_{os.getpid()}.py"
    planted.write_text(PLANTED)
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                               "-o", "addopts=", str(planted)], cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        planted.unlink()
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "test_trains_in_a_module_fixture trains a run: mark it @pytest.mark.integration" in output
    assert "test_starts_python starts a Python process: mark it @pytest.mark.integration" in output
    assert all(count in output for count in ("1 failed", "1 passed", "1 error")), output[-500:]
