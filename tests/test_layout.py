"""The package's layers, enforced: imports flow one way, top to bottom (see README, "Layout").

Every module of ``robustness_book/`` is parsed with :mod:`ast`; every import in it (module level and inside functions,
relative and absolute, ``importlib.import_module("robustness....")`` with a literal name too) is mapped to the
layer of the imported module. A module may import its own layer and any layer below it, never one above, and
evaluate never imports defenses (:data:`FORBIDDEN`). A new module must be given a layer in :data:`LAYERS` (the
test fails until it is). Dynamic imports built from non-literal strings are not seen.

Private names stay private: no module imports ``_x`` (a private function, class, constant or module) from a
module outside its own unit, nor reads ``module._x`` of such a module. A unit is a subpackage (``attacks/``
shares ``attacks/_core.py`` among its attack files) or, at the top level, a single module. The private-named
utility modules ``_io`` and ``_torchvision`` are meant to be imported by anyone.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "robustness_book"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: Layers from the bottom up: (name, modules). A module name ending in ``.*`` covers a subpackage (its
#: ``__init__`` and every module in it). Entry points sit above the chapters because they choose and run a
#: chapter by its SPEC; ``config`` and ``results`` sit below them because chapters build on them, and so does
#: ``zoo`` (the named recipes of the models chapters share): it trains through ``train`` and measures the listed
#: models' accuracy with ``evaluate``, so it sits above both, and chapters and the command line ask it for models.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("utilities", ("robustness_book", "robustness_book._io", "robustness_book._torchvision", "robustness_book.runtime",
                   "robustness_book.report", "robustness_book.timing")),
    ("data", ("robustness_book.data",)),
    ("models", ("robustness_book.models",)),
    ("attacks", ("robustness_book.attacks.*",)),
    ("train", ("robustness_book.train",)),
    ("defenses", ("robustness_book.defenses.*",)),
    ("evaluate", ("robustness_book.evaluate.*",)),
    ("runner", ("robustness_book.config", "robustness_book.results", "robustness_book.zoo")),
    ("chapters", ("robustness_book.chapters.*",)),
    ("entry points", ("robustness_book.cli", "robustness_book.runner", "robustness_book.bench.*", "robustness_book.recipe_study",
                      "robustness_book.reference",
                      "robustness_book.__main__")),
)
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}

#: Downward edges that are forbidden all the same: evaluation is generic and never depends on a defense (a
#: chapter passes a defended model, or a defense's surrogate, to it), so evaluate and defenses are siblings.
FORBIDDEN = {("evaluate", "defenses")}

#: Private-named modules anyone may import.
PUBLIC_PRIVATE_MODULES = {"robustness_book._io", "robustness_book._torchvision"}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name (``None`` if no layer claims it)."""
    for name, patterns in LAYERS:
        for pattern in patterns:
            if pattern.endswith(".*"):
                base = pattern[:-2]
                if module == base or module.startswith(base + "."):
                    return name
            elif module == pattern:
                return name
    return None


def unit_of(module: str) -> str:
    """The unit that shares private names: the subpackage (a ``.*`` entry of LAYERS) holding ``module``, else the
    module itself."""
    for _, patterns in LAYERS:
        for pattern in patterns:
            base = pattern[:-2]
            if pattern.endswith(".*") and (module == base or module.startswith(base + ".")):
                return base
    return module


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def package_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name → file of every module of the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    importer: str
    imported: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True)
class _Import:
    line: int
    module: str  # the resolved dotted module
    name: str | None  # the name imported from it (None for ``import module``)
    bound: str | None  # the local name it is bound to, if it is a package module


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> list[_Import]:
    """Every import of a ``robustness_book`` module in ``tree`` (anywhere in the file), resolved to dotted names."""
    package = module if is_package else module.rpartition(".")[0]
    out: list[_Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    bound = alias.asname or alias.name.split(".")[0]
                    out.append(_Import(node.lineno, alias.name, None,
                                       bound if alias.asname else None))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:  # ``from . import data`` imports the module robustness_book.data
                    out.append(_Import(node.lineno, sub, None, alias.asname or alias.name))
                else:
                    out.append(_Import(node.lineno, base, alias.name, None))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and node.args[0].value.startswith(PACKAGE)):
            out.append(_Import(node.lineno, node.args[0].value, None, None))
    return out


def check_source(module: str, source: str, path: str = "<string>", is_package: bool = False,
                 known: set[str] | None = None) -> list[Violation]:
    """The layering and privacy violations of one module's source (``module`` is its dotted name)."""
    known = set(package_modules()) if known is None else known
    tree = ast.parse(source, filename=path)
    here = layer_of(module)
    if here is None:
        return [Violation(path, 1, module, "", f"{module} belongs to no layer: add it to LAYERS in "
                                                "tests/test_layout.py (and to the layer table in README.md)")]
    out = []
    imports = _imports(tree, module, is_package, known)
    for imp in imports:
        there = layer_of(imp.module)
        if there is None:
            out.append(Violation(path, imp.line, module, imp.module,
                                 f"{module} imports {imp.module}, which belongs to no layer"))
        elif RANK[there] > RANK[here]:
            out.append(Violation(path, imp.line, module, imp.module,
                                 f"{module} ({here}) imports {imp.module} ({there}): layer {here!r} may not import "
                                 f"layer {there!r}, which is above it"))
        elif (here, there) in FORBIDDEN:
            out.append(Violation(path, imp.line, module, imp.module,
                                 f"{module} ({here}) imports {imp.module} ({there}): layer {here!r} never imports "
                                 f"layer {there!r}"))
        # privacy: a private module on the path, or a private name imported from it
        own = unit_of(module) == unit_of(imp.module)
        if own:
            continue
        parts = imp.module.split(".")
        private_module = next((".".join(parts[:i + 1]) for i, p in enumerate(parts) if _private(p)), None)
        if private_module and private_module not in PUBLIC_PRIVATE_MODULES:
            out.append(Violation(path, imp.line, module, imp.module,
                                 f"{module} imports from the private module {private_module} of another unit"))
        elif imp.name and _private(imp.name):
            out.append(Violation(path, imp.line, module, imp.module,
                                 f"{module} imports the private name {imp.name} from {imp.module}"))
    # ``module._x`` through a name bound to another unit's module
    bound = {imp.bound: imp.module for imp in imports if imp.bound}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in bound and unit_of(bound[node.value.id]) != unit_of(module)
                and f"{bound[node.value.id]}.{node.attr}" not in PUBLIC_PRIVATE_MODULES):
            out.append(Violation(path, node.lineno, module, bound[node.value.id],
                                 f"{module} reads the private name {node.attr} of {bound[node.value.id]}"))
    return list(dict.fromkeys(out))  # ``from m import a, b`` is one edge


def check_package(root: Path = ROOT) -> list[Violation]:
    modules = package_modules(root)
    known = set(modules)
    out = []
    for module, path in modules.items():
        rel = str(path.relative_to(root.parent))
        out += check_source(module, path.read_text(encoding="utf-8"), rel, path.name == "__init__.py", known)
    return out


# --------------------------------------------------------------------------- the package


def test_every_module_has_a_layer():
    missing = [m for m in package_modules() if layer_of(m) is None]
    assert not missing, f"modules with no layer (add them to LAYERS): {missing}"
    assert len(package_modules()) > 20  # the walk really found the package


def test_imports_flow_down_and_private_names_stay_private():
    violations = check_package()
    assert not violations, "layering violations:\n" + "\n".join(map(str, violations))


def test_the_never_rules_of_the_design_are_upward_edges():
    """The design's explicit never-rules hold by the order of LAYERS or by FORBIDDEN (so reordering LAYERS
    cannot silently allow one)."""
    never = [("evaluate", "defenses"), ("evaluate", "chapters"), ("defenses", "evaluate"), ("attacks", "defenses"),
             ("attacks", "train"), ("attacks", "evaluate"), ("models", "attacks"), ("data", "models"),
             ("runner", "chapters"), ("defenses", "chapters"), ("train", "defenses"), ("utilities", "data")]
    for importer, imported in never:
        assert RANK[importer] < RANK[imported] or (importer, imported) in FORBIDDEN, f"{importer} → {imported}"
    assert [name for name, _ in LAYERS][1:] == ["data", "models", "attacks", "train", "defenses", "evaluate",
                                                "runner", "chapters", "entry points"]


# --------------------------------------------------------------------------- the checker flags bad edges


KNOWN = {"robustness_book", "robustness_book.data", "robustness_book.models", "robustness_book.attacks", "robustness_book.attacks._core",
         "robustness_book.attacks.pgd", "robustness_book.train", "robustness_book.defenses", "robustness_book.defenses.deep_defense",
         "robustness_book.defenses.jumprelu", "robustness_book.evaluate", "robustness_book.evaluate.core", "robustness_book.config",
         "robustness_book.chapters", "robustness_book.chapters.baselines", "robustness_book._io", "robustness_book.runtime"}


def _check(module, source, is_package=False):
    return check_source(module, source, "fake.py", is_package, KNOWN)


@pytest.mark.parametrize("module,source,line,edge", [
    # module level, relative
    ("robustness_book.evaluate.fake", "import torch\nfrom ..defenses import jumprelu\n", 2,
     "robustness_book.defenses.jumprelu (defenses)"),
    # inside a function, absolute
    ("robustness_book.attacks.fake", "def f():\n    from robustness_book.chapters import baselines\n", 2,
     "robustness_book.chapters.baselines (chapters)"),
    # ``import a.b.c``
    ("robustness_book.models", "import robustness_book.attacks.pgd\n", 1, "robustness_book.attacks.pgd (attacks)"),
    ("robustness_book.data", "from . import models\n", 1, "robustness_book.models (models)"),
    ("robustness_book.config", "x = 1\nif x:\n    from .chapters import baselines\n", 3, "(chapters)"),
    ("robustness_book.evaluate.core", "from .. import defenses\n", 1, "robustness_book.defenses (defenses)"),
    ("robustness_book.runtime", "from .data import DATASETS\n", 1, "robustness_book.data (data)"),
    ("robustness_book.attacks", "from ..train import fit\n", 1, "robustness_book.train (train)"),
    ("robustness_book.attacks.fake", "import importlib\nm = importlib.import_module('robustness_book.evaluate.core')\n", 2,
     "robustness_book.evaluate.core (evaluate)"),
])
def test_checker_flags_an_upward_edge(module, source, line, edge):
    found = _check(module, source, is_package=module == "robustness_book.attacks")
    assert len(found) == 1, found
    assert found[0].line == line and edge in found[0].message
    assert "above it" in found[0].message or "never imports" in found[0].message
    assert str(found[0]).startswith(f"fake.py:{line}: ")


@pytest.mark.parametrize("module,source", [
    ("robustness_book.evaluate.fake", "from ..attacks import pgd_linf\nfrom ..data import threat_eps\nfrom . import core\n"),
    ("robustness_book.chapters.fake", "from .. import evaluate\nfrom ..defenses.jumprelu import retrofit\n"
                                 "from ..config import Param\nfrom ..report import pct\n"),
    ("robustness_book.cli", "from .chapters import baselines\n"),  # entry points run chapters
    ("robustness_book.attacks.fake", "from ._core import _per_sample\n"),  # private names inside their own subpackage
    ("robustness_book.train", "from . import _io\n_io.sha256_file\nfrom .runtime import cache_root\n"),
    ("robustness_book.data", "import os\nimport torch\nfrom robustness_book._io import atomic_path\n"),
])
def test_checker_accepts_downward_edges(module, source):
    assert _check(module, source) == []


@pytest.mark.parametrize("module,source,what", [
    ("robustness_book.chapters.fake", "from ..defenses.deep_defense import _normalize_layer\n",
     "private name _normalize_layer"),
    ("robustness_book.evaluate.fake", "from ..attacks._core import eval_mode\n", "private module robustness_book.attacks._core"),
    ("robustness_book.evaluate.fake", "from ..attacks import _core\n", "private module robustness_book.attacks._core"),
    ("robustness_book.models", "from . import data\nx = data._INFO\n", "private name _INFO of robustness_book.data"),
    ("robustness_book.train", "from .data import _check_name\n", "private name _check_name"),
])
def test_checker_flags_a_private_import(module, source, what):
    found = _check(module, source)
    assert len(found) == 1 and what in found[0].message, found


def test_checker_flags_a_module_without_a_layer():
    found = _check("robustness_book.newthing", "x = 1\n")
    assert len(found) == 1 and "belongs to no layer" in found[0].message
