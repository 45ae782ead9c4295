"""The package's layers, read from the source with `ast` (nothing is imported).

Bottom to top:

- `itop.sparse`: truly sparse storage and its products (SparseLinear, index structures, kernels,
  the uniform position sampler). It imports nothing of the engine.
- `itop.sparsity`: the engine (criteria, schedule, Rs, the Sparsifier) over masked weights and
  truly sparse layers; it may use `itop.sparse`, and nothing above itself.
- `itop.convert`: conversions between the storages (`sparsify`, `export`, `densify`), above both;
  `itop.sparse` names them by a lazy re-export (its module `__getattr__`), the one upward
  reference the storage holds.
- `itop.train`, `itop.report`, `itop.integrations` (and `itop.data`, `itop.models`) on top.

Imports are taken as Python runs them: a module-level import (class bodies and `try` blocks
included) runs when its module is imported; one inside a function runs when it is called; one
under `if TYPE_CHECKING:` never runs (`itop.sparse` names the conversions there, for type
checkers and the API reference).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "itop"

# Above the engine: nothing in itop.sparse or itop.sparsity may import these.
ABOVE_ENGINE = ("itop.convert", "itop.train", "itop.report", "itop.integrations", "itop.data", "itop.models")
# The lazy re-exports itop.sparse keeps of the conversions above it: (module, function, target).
LAZY_UPWARD = {("itop.sparse", "__getattr__", "itop.convert")}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a module of itop (the submodule when `from package import submodule`)
    line: int
    function: str | None  # the enclosing function for an import that runs when called; None at module level


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(path): path for path in sorted(root.rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, source: str, modules: set[str], is_package: bool) -> list[Import]:
    """The imports of itop modules that `source` (module `name`) makes when run."""
    package = name if is_package else name.rpartition(".")[0]
    found: list[Import] = []

    def base(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = package.split(".")
        anchor = ".".join(parts[: len(parts) - node.level + 1])
        return f"{anchor}.{node.module}" if node.module else anchor

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:
                visit(child, function)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(name, alias.name, node.lineno, function))
        elif isinstance(node, ast.ImportFrom):
            origin = base(node)
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                found.append(Import(name, submodule if submodule in modules else origin, node.lineno, function))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            function = function or getattr(node, "name", "<lambda>")
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(source), None)
    return [i for i in found if i.target == "itop" or i.target.startswith("itop.")]


def all_imports(files: dict[str, Path] | None = None, sources: dict[str, str] | None = None) -> list[Import]:
    files = source_files() if files is None else files
    sources = sources or {}
    modules = set(files) | set(sources)
    result = []
    for name in sorted(modules):
        path = files.get(name)
        text = sources[name] if name in sources else path.read_text(encoding="utf-8")
        is_package = path.name == "__init__.py" if path is not None else False
        result.extend(imports_of(name, text, modules, is_package))
    return result


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph `edges`, as the modules along it (first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := walk(node)):
            return found
    return None


def graph(imports: list[Import], module_level_only: bool, inside: tuple[str, ...] = ("itop",)) -> dict[str, set[str]]:
    """Importer -> imported among modules inside `inside` (the root package's own edges left out:
    `itop/__init__.py` imports the subpackages, and a submodule's import does not go through it by name)."""
    edges: dict[str, set[str]] = {}
    for i in imports:
        if module_level_only and i.function is not None:
            continue
        if i.importer == i.target or "itop" in (i.importer, i.target):
            continue
        if any(within(i.importer, p) for p in inside) and any(within(i.target, p) for p in inside):
            edges.setdefault(i.importer, set()).add(i.target)
    return edges


def subpackages(imports: list[Import]) -> list[Import]:
    """The imports with each module replaced by its subpackage of itop (itop.sparse.layer -> itop.sparse)."""

    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    return [Import(top(i.importer), top(i.target), i.line, i.function) for i in imports]


def described(imports: list[Import]) -> str:
    return "\n".join(
        f"  {i.importer} (line {i.line}{', in ' + i.function + '()' if i.function else ''}) imports {i.target}" for i in imports
    )


# --- the rules ---------------------------------------------------------------------------------


def storage_imports_of_the_engine(imports: list[Import]) -> list[Import]:
    return [i for i in imports if within(i.importer, "itop.sparse") and within(i.target, "itop.sparsity")]


def storage_imports_from_above(imports: list[Import]) -> list[Import]:
    return [
        i
        for i in imports
        if within(i.importer, "itop.sparse")
        and any(within(i.target, p) for p in ABOVE_ENGINE)
        and (i.importer, i.function, i.target) not in LAZY_UPWARD
    ]


def engine_imports_from_above(imports: list[Import]) -> list[Import]:
    return [i for i in imports if within(i.importer, "itop.sparsity") and any(within(i.target, p) for p in ABOVE_ENGINE)]


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return all_imports()


def test_the_storage_imports_nothing_of_the_engine(imports):
    wrong = storage_imports_of_the_engine(imports)
    assert not wrong, "itop.sparse (storage) must not import itop.sparsity (engine), not even in a function:\n" + described(wrong)


def test_the_storage_imports_nothing_above_it_but_its_lazy_re_exports(imports):
    wrong = storage_imports_from_above(imports)
    assert not wrong, "itop.sparse imports a layer above it:\n" + described(wrong)
    lazy = [i for i in imports if (i.importer, i.function, i.target) in LAZY_UPWARD]
    assert lazy, "the lazy re-export of the conversions is gone: update LAZY_UPWARD"


def test_the_engine_imports_nothing_above_it(imports):
    wrong = engine_imports_from_above(imports)
    assert not wrong, "itop.sparsity (engine) imports a layer above it:\n" + described(wrong)


def test_no_cycle_among_module_level_imports(imports):
    found = cycle(graph(imports, module_level_only=True))
    assert found is None, "module-level import cycle: " + " -> ".join(found)


def test_no_cycle_among_subpackages_at_module_level(imports):
    """Each subpackage taken as one node: itop.sparse -> itop.sparsity -> itop.sparse is a cycle even
    when no single module closes it (Python then imports one half-initialised package from the other)."""
    found = cycle(graph(subpackages(imports), module_level_only=True))
    assert found is None, "module-level import cycle between subpackages: " + " -> ".join(found)


def test_no_cycle_between_storage_and_engine_even_through_functions(imports):
    found = cycle(graph(imports, module_level_only=False, inside=("itop.sparse", "itop.sparsity")))
    assert found is None, "import cycle: " + " -> ".join(found)


def test_no_cycle_among_train_modules_even_through_functions(imports):
    found = cycle(graph(imports, module_level_only=False, inside=("itop.train",)))
    assert found is None, "import cycle in itop.train: " + " -> ".join(found)


def test_the_layers_above_use_only_public_names_of_storage_and_engine():
    """Modules outside itop.sparse and itop.sparsity import no underscored name from them."""
    wrong = []
    for name, path in source_files().items():
        if within(name, "itop.sparse") or within(name, "itop.sparsity"):
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            parts = package.split(".")
            origin = (
                ".".join(parts[: len(parts) - node.level + 1]) + (f".{node.module}" if node.module else "")
                if node.level
                else node.module or ""
            )
            if within(origin, "itop.sparse") or within(origin, "itop.sparsity"):
                wrong += [f"  {name} (line {node.lineno}) imports {origin}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not wrong, "private names of the lower layers used above them:\n" + "\n".join(wrong)


# --- the reader itself ---------------------------------------------------------------------------


def test_the_reader_sees_each_kind_of_import():
    files = {
        "itop.sparse": PACKAGE / "sparse" / "__init__.py",
        "itop.sparse.layer": PACKAGE / "sparse" / "layer.py",
        "itop.sparsity": PACKAGE / "sparsity" / "__init__.py",
        "itop.sparsity.select": PACKAGE / "sparsity" / "select.py",
    }
    layer = (
        "from typing import TYPE_CHECKING\n"
        "import torch\n"
        "from ..sparsity.select import top_k_mask\n"
        "from ..sparsity import select\n"
        "import itop.sparsity.select as s\n"
        "if TYPE_CHECKING:\n    from ..train import config\n"
        "class A:\n    from .. import convert\n"
        "def f():\n    from itop.sparsity import select\n"
    )
    found = all_imports(
        files,
        {
            "itop.sparse.layer": layer,
            "itop.sparse": "from .layer import x\n",
            "itop.sparsity": "",
            "itop.sparsity.select": "from ..sparse.layer import x\n",
            "itop.convert": "",
        },
    )
    assert [(i.importer, i.target, i.function) for i in found] == [
        ("itop.sparse", "itop.sparse.layer", None),
        ("itop.sparse.layer", "itop.sparsity.select", None),
        ("itop.sparse.layer", "itop.sparsity.select", None),
        ("itop.sparse.layer", "itop.sparsity.select", None),
        ("itop.sparse.layer", "itop.convert", None),
        ("itop.sparse.layer", "itop.sparsity.select", "f"),
        ("itop.sparsity.select", "itop.sparse.layer", None),
    ]
    assert len(storage_imports_of_the_engine(found)) == 4
    assert [i.target for i in storage_imports_from_above(found)] == ["itop.convert"]
    assert cycle(graph(found, module_level_only=True)) == ["itop.sparse.layer", "itop.sparsity.select", "itop.sparse.layer"]


def test_the_rules_catch_an_engine_import_in_the_storage_and_a_lazy_cycle():
    files = source_files()
    layer = files["itop.sparse.layer"].read_text(encoding="utf-8") + "\nfrom ..sparsity.select import top_k_mask\n"
    before = storage_imports_of_the_engine(all_imports(files))
    found = all_imports(files, {"itop.sparse.layer": layer})
    assert [i.line for i in storage_imports_of_the_engine(found) if i not in before] == [layer.count("\n")]
    assert cycle(graph(subpackages(found), module_level_only=True))
    presets = files["itop.train.presets"].read_text(encoding="utf-8") + "\ndef f():\n    from .config import TrainConfig\n"
    found = all_imports(files, {"itop.train.presets": presets})
    assert cycle(graph(found, module_level_only=False, inside=("itop.train",)))
