"""Every third-party module the production packages import is declared in pyproject.toml.

Imports are read with `ast` from every `.py` file under `PACKAGES`, including imports inside
functions. Relative imports, the packages themselves and the standard library
(`sys.stdlib_module_names`) are first-party. Each remaining module is mapped to the distributions
that install it with `importlib.metadata.packages_distributions()` (`cv2` -> opencv-python...,
`PIL` -> pillow, `yaml` -> PyYAML; a namespace such as `google` is narrowed by its sub-package:
`google.protobuf` -> protobuf), and one of them must be a requirement of `[project] dependencies`.
The `dev` extra does not count: production code must run on a plain `pip install`.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PACKAGES: tuple[str, ...] = ("drivegen", "chopgrad_core", "conditions")

# Imported modules whose distribution is installed outside pyproject.toml, with the reason.
INSTALLED_OUTSIDE_PYPROJECT: dict[str, str] = {
    # Makefile: `$(BIN)/pip install -q --no-deps waymo-open-dataset-tf-2-12-0==1.6.7` (its metadata
    # pins tensorflow and an old numpy, so it cannot be a [project] dependency).
    "waymo_open_dataset": "waymo-open-dataset-tf-2-12-0",
}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {_canonical(Requirement(r).name) for r in project["dependencies"]}


def third_party_imports(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> dict[str, list[str]]:
    """Dotted module name (top level plus one sub-level) -> ['file:line', ...] importing it."""
    out: dict[str, list[str]] = {}
    for pkg in packages:
        for file in sorted((root / pkg).rglob("*.py")):
            rel = file.relative_to(root)
            for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), filename=str(rel))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in packages or top in sys.stdlib_module_names or top == "__future__":
                        continue
                    key = ".".join(name.split(".")[:2])
                    out.setdefault(key, []).append(f"{rel}:{node.lineno}")
    return out


def distributions_of(module: str, mapping: dict[str, list[str]]) -> set[str]:
    """Installed distributions that provide `module` ('top' or 'top.sub'), canonical names."""
    top, _, sub = module.partition(".")
    dists = {_canonical(d) for d in mapping.get(top, [])}
    if len(dists) > 1 and sub:  # a namespace package: keep the distributions that ship top/sub
        narrowed = set()
        for dist in dists:
            files = md.distribution(dist).files or []
            if any(f.parts[:2] == (top, sub) or str(f).startswith(f"{top}/{sub}.") for f in files):
                narrowed.add(dist)
        dists = narrowed or dists
    return dists


@pytest.fixture(scope="module")
def mapping() -> dict[str, list[str]]:
    return md.packages_distributions()


class TestThirdPartyImportsDeclared:
    """Each third-party module imported under drivegen/, chopgrad_core/ or conditions/ comes from
    a distribution listed in [project] dependencies (or one named in INSTALLED_OUTSIDE_PYPROJECT);
    the failure names the module, its distribution and every file:line importing it."""

    def test_scan_finds_known_third_party_imports(self) -> None:
        found = {m.split(".")[0] for m in third_party_imports()}
        assert {"torch", "numpy", "diffusers", "zarr", "ray"} <= found, sorted(found)

    def test_namespace_module_maps_to_its_own_distribution(self, mapping: dict[str, list[str]]) -> None:
        assert distributions_of("google.protobuf", mapping) == {"protobuf"}
        assert distributions_of("PIL", mapping) == {"pillow"}

    def test_undeclared_third_party_import_fails(self, mapping: dict[str, list[str]]) -> None:
        declared = declared_distributions()
        problems = []
        for module, where in sorted(third_party_imports().items()):
            top = module.split(".")[0]
            if top in INSTALLED_OUTSIDE_PYPROJECT:
                assert _canonical(INSTALLED_OUTSIDE_PYPROJECT[top]) in distributions_of(top, mapping)
                continue
            dists = distributions_of(module, mapping)
            if not dists:
                problems.append(f"{module}: no installed distribution provides it (imported at {', '.join(where)})")
            elif not dists & declared:
                problems.append(
                    f"{module}: distribution {' or '.join(sorted(dists))} is not in [project] "
                    f"dependencies (imported at {', '.join(where[:5])}{' ...' if len(where) > 5 else ''})"
                )
        assert not problems, "undeclared third-party imports:\n  " + "\n  ".join(problems)
