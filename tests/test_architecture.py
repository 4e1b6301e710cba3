"""The import graph of the production packages, read with `ast`, obeys the architecture rules.

Every import statement is read, including imports inside functions, methods and
`if TYPE_CHECKING:` blocks (an import hidden in a function is still a dependency). A module is any
`.py` file under one of `PACKAGES` (folders without an `__init__.py` count too). The rules:

1. Stages do not import each other. The stages are `STAGES`; any module under one stage that
   imports any module of another stage fails (`drivegen.train` <-> `drivegen.generate`, and later
   `drivegen.evaluate`). Shared code belongs below the stages (`drivegen.model`, `drivegen.data`).
2. No module imports another module's private name: `from x import _y` (x another module of
   `PACKAGES`, `_y` a single-underscore name, whether or not x re-exports it from a submodule)
   and `x._y` attribute access on an imported first-party module. A private name used outside
   its module is a missing public module or function. Dunder names (`__version__`) are not
   private.
3. Production code never imports test code or test tools: `TEST_ONLY_MODULES`.
4. Layering: a module under a key of `FORBIDDEN_IMPORTS` must not import any module under the
   listed prefixes (`chopgrad_core` and `conditions` know nothing of `drivegen`, and nothing of
   each other; inside drivegen, `data` sits below `model`, which sits below the
   stages).

Packages and stages that do not exist yet (the package is being restructured) make their rule pass
vacuously; the scanner itself must still find more than `MIN_MODULES` modules, and the rules are
checked against a synthetic package with one violation of each kind, so a broken scanner fails.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

# --------------------------------------------------------------------------------------------------
# The rules, as data
# --------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]

PACKAGES: tuple[str, ...] = ("drivegen", "chopgrad_core", "conditions")

# Pipeline stages: entry points that may import shared layers but never each other.
STAGES: tuple[str, ...] = (
    "drivegen.preprocess",
    "drivegen.train",
    "drivegen.generate",
    "drivegen.evaluate",
)

# importer prefix -> module prefixes it must not import.
FORBIDDEN_IMPORTS: dict[str, tuple[str, ...]] = {
    # README: chopgrad_core has "no driving knowledge", so neither drivegen nor conditions.
    "chopgrad_core": ("drivegen", "conditions"),
    "conditions": ("drivegen", "chopgrad_core"),
    "drivegen.data": ("drivegen.model", *STAGES),
    "drivegen.model": STAGES,
    # A viewer of logs, clips and generated folders: reads files, never runs the model or a stage.
    "drivegen.preview": (*STAGES, "drivegen.model"),
}

# Top-level modules production code must never import.
TEST_ONLY_MODULES: frozenset[str] = frozenset({"tests", "conftest", "pytest", "_pytest", "hypothesis"})

MIN_MODULES = 20


# --------------------------------------------------------------------------------------------------
# Scanner
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One imported module (`name is None`) or one name imported from a module."""

    importer: str  # dotted module name of the importing file
    path: str  # the importing file, relative to the scanned root
    line: int
    module: str  # dotted name of the imported module (a submodule when `from pkg import sub`)
    name: str | None = None  # `from module import name` where name is not a submodule

    def where(self) -> str:
        what = self.module if self.name is None else f"{self.module}.{self.name}"
        return f"{self.path}:{self.line}: imports {what}"


@dataclass(frozen=True)
class Graph:
    modules: dict[str, Path]  # dotted name -> file
    packages: frozenset[str]  # dotted names whose file is an __init__.py
    imports: tuple[Import, ...]
    attributes: tuple[Import, ...]  # `x._y` accesses on imported first-party modules

    def __repr__(self) -> str:  # keeps pytest's failure output to the violation list
        return f"Graph({len(self.modules)} modules, {len(self.imports)} imports)"


def _module_name(root: Path, file: Path) -> str:
    parts = list(file.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def scan(root: Path, packages: tuple[str, ...]) -> Graph:
    files = sorted(f for pkg in packages if (root / pkg).is_dir() for f in (root / pkg).rglob("*.py"))
    modules = {_module_name(root, f): f for f in files}
    package_names = frozenset(_module_name(root, f) for f in files if f.name == "__init__.py")
    # Folders that hold modules are packages too, even before their __init__.py exists.
    for name in list(modules):
        parts = name.split(".")
        package_names |= {".".join(parts[:i]) for i in range(1, len(parts))}
    known = set(modules) | package_names
    imports: list[Import] = []
    attributes: list[Import] = []
    for importer, file in modules.items():
        rel = str(file.relative_to(root))
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=rel)
        is_pkg = file.name == "__init__.py"
        bound: dict[str, str] = {}  # local name -> first-party module it refers to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    imports.append(Import(importer, rel, node.lineno, alias.name))
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        top = alias.name.split(".")[0]
                        bound[top] = top
            elif isinstance(node, ast.ImportFrom):
                base = (
                    _resolve_relative(importer, is_pkg, node.level, node.module)
                    if node.level
                    else node.module or ""
                )
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if alias.name != "*" and sub in known:
                        imports.append(Import(importer, rel, node.lineno, sub))
                        bound[alias.asname or alias.name] = sub
                    else:
                        name = None if alias.name == "*" else alias.name
                        imports.append(Import(importer, rel, node.lineno, base, name))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not _is_private(node.attr):
                continue
            chain: list[str] = []
            value: ast.expr = node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if not isinstance(value, ast.Name) or value.id not in bound:
                continue
            target = bound[value.id]
            for attr in reversed(chain):
                target = f"{target}.{attr}"
            if target in known and target != importer:
                attributes.append(Import(importer, rel, node.lineno, target, node.attr))
    return Graph(modules, package_names, tuple(imports), tuple(attributes))


def _stage_of(module: str, stages: tuple[str, ...]) -> str | None:
    return next((s for s in stages if _under(module, s)), None)


def stage_violations(graph: Graph, stages: tuple[str, ...] = STAGES) -> list[str]:
    out = []
    for imp in graph.imports:
        src, dst = _stage_of(imp.importer, stages), _stage_of(imp.module, stages)
        if src and dst and src != dst:
            out.append(f"{imp.where()} (stage {src} imports stage {dst})")
    return out


def private_name_violations(graph: Graph, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    out = []
    for imp in graph.imports:
        first_party = any(_under(imp.module, p) for p in packages)
        if first_party and imp.name and _is_private(imp.name) and imp.module != imp.importer:
            out.append(f"{imp.where()} (private name {imp.name!r} of module {imp.module})")
    for imp in graph.attributes:
        out.append(f"{imp.where()} (attribute access to private name {imp.name!r} of module {imp.module})")
    return out


def forbidden_test_tool_imports(graph: Graph, forbidden: frozenset[str] = TEST_ONLY_MODULES) -> list[str]:
    return [
        f"{imp.where()} (production code imports test-only module {imp.module.split('.')[0]!r})"
        for imp in graph.imports
        if imp.module.split(".")[0] in forbidden
    ]


def layer_violations(graph: Graph, rules: dict[str, tuple[str, ...]] = FORBIDDEN_IMPORTS) -> list[str]:
    out = []
    for imp in graph.imports:
        for importer_prefix, banned in rules.items():
            if not _under(imp.importer, importer_prefix):
                continue
            for prefix in banned:
                if _under(imp.module, prefix) and not _under(imp.module, importer_prefix):
                    out.append(f"{imp.where()} ({importer_prefix} must not import {prefix})")
    return out


# --------------------------------------------------------------------------------------------------
# Tests on the repository
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> Graph:
    return scan(REPO, PACKAGES)


def _report(violations: list[str], rule: str) -> str:
    return f"{len(violations)} import(s) break the rule '{rule}':\n  " + "\n  ".join(violations)


class TestRepositoryImportGraph:
    """The drivegen, chopgrad_core and conditions packages obey every rule of the module docstring;
    each failure names the importing file, the line and the imported name."""

    def test_scanner_reads_packages_finds_many_modules(self, graph: Graph) -> None:
        assert len(graph.modules) > MIN_MODULES, sorted(graph.modules)
        assert {m.split(".")[0] for m in graph.modules} == set(PACKAGES)
        assert len(graph.imports) > 10 * MIN_MODULES

    def test_stage_modules_import_sibling_stage_fails(self, graph: Graph) -> None:
        violations = stage_violations(graph)
        assert not violations, _report(violations, "stages do not import each other")

    def test_module_imports_private_name_fails(self, graph: Graph) -> None:
        violations = private_name_violations(graph)
        assert not violations, _report(violations, "no private names across modules")

    def test_production_imports_test_code_fails(self, graph: Graph) -> None:
        violations = forbidden_test_tool_imports(graph)
        assert not violations, _report(violations, "production code imports no test code")

    def test_lower_layer_imports_higher_layer_fails(self, graph: Graph) -> None:
        violations = layer_violations(graph)
        assert not violations, _report(violations, "layers import only downwards")


# --------------------------------------------------------------------------------------------------
# The scanner on a synthetic package: every rule catches its violation
# --------------------------------------------------------------------------------------------------

_SYNTHETIC = {
    "pkg/__init__.py": "from pkg.data.store import open_store\n",
    "pkg/data/__init__.py": "",
    "pkg/data/store.py": (
        "import json\n"
        "def open_store():\n"
        "    from pkg.model import net  # data imports model\n"
        "    return net\n"
        "def _helper():\n"
        "    return 1\n"
    ),
    "pkg/model/__init__.py": "",
    "pkg/model/net.py": "from ..data import store\nfrom ..data.store import open_store\n",
    "pkg/train/__init__.py": "",
    "pkg/train/loop.py": (
        "from pkg.data.store import _helper  # private name\n"
        "import pkg.data.store as st\n"
        "def run():\n"
        "    import pytest  # test tool\n"
        "    from pkg.generate import sample  # sibling stage\n"
        "    return st._helper() + st.open_store().__name__.__len__()\n"
    ),
    "pkg/generate/__init__.py": "",
    "pkg/generate/sample.py": "import pkg.data.store\nx = pkg.data.store._helper\n",
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Graph:
    root = tmp_path_factory.mktemp("synthetic")
    for rel, text in _SYNTHETIC.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return scan(root, ("pkg",))


class TestScannerOnSyntheticPackage:
    """Each rule reports exactly the planted violations (function-local and relative imports
    included) with file, line and imported name, and nothing for the allowed imports."""

    def test_function_local_sibling_stage_import_is_reported(self, synthetic: Graph) -> None:
        assert stage_violations(synthetic, ("pkg.train", "pkg.generate", "pkg.evaluate")) == [
            "pkg/train/loop.py:5: imports pkg.generate.sample (stage pkg.train imports stage pkg.generate)"
        ]

    def test_private_from_import_and_attribute_are_reported(self, synthetic: Graph) -> None:
        assert sorted(private_name_violations(synthetic, ("pkg",))) == [
            "pkg/generate/sample.py:2: imports pkg.data.store._helper "
            "(attribute access to private name '_helper' of module pkg.data.store)",
            "pkg/train/loop.py:1: imports pkg.data.store._helper "
            "(private name '_helper' of module pkg.data.store)",
            "pkg/train/loop.py:6: imports pkg.data.store._helper "
            "(attribute access to private name '_helper' of module pkg.data.store)",
        ]

    def test_function_local_pytest_import_is_reported(self, synthetic: Graph) -> None:
        assert forbidden_test_tool_imports(synthetic) == [
            "pkg/train/loop.py:4: imports pytest (production code imports test-only module 'pytest')"
        ]

    def test_upward_import_is_reported_relative_import_resolved(self, synthetic: Graph) -> None:
        rules = {"pkg.data": ("pkg.model", "pkg.train"), "pkg.model": ("pkg.train",)}
        assert layer_violations(synthetic, rules) == [
            "pkg/data/store.py:3: imports pkg.model.net (pkg.data must not import pkg.model)"
        ]
        # The relative imports of pkg/model/net.py resolve to the data package and its module.
        mods = {(i.module, i.name) for i in synthetic.imports if i.importer == "pkg.model.net"}
        assert mods == {("pkg.data.store", None), ("pkg.data.store", "open_store")}
