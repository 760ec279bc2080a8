"""The architecture stays visible in the tree: services meet only on NATS.

`broker` is the contract everyone imports; `runner`, `scheduler`, `store`, `notifier`
and `tui` import `broker` and never each other or the CLI; Textual stays inside `tui`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("runner", "scheduler", "store", "notifier", "tui")
OURS = ("batchdeck", "broker", *SERVICES)

# package -> the packages of ours it may import
ALLOWED = {
    "broker": {"broker"},
    **{service: {"broker", service} for service in SERVICES},
    "batchdeck": set(OURS),  # the command line starts every service
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_the_architecture_allows(package):
    for module in _modules(package):
        ours = _imports(module) & set(OURS)
        assert ours <= ALLOWED[package], f"{module.relative_to(ROOT)} imports {sorted(ours - ALLOWED[package])}"


def test_textual_stays_in_the_dashboard():
    for package in ALLOWED:
        if package == "tui":
            continue
        for module in _modules(package):
            assert "textual" not in _imports(module), f"{module.relative_to(ROOT)} imports textual"


def test_the_contract_package_exists_with_its_modules():
    # Guards against the checks above passing on an empty or moved tree.
    assert {"types", "subjects", "codec", "service"} <= {p.stem for p in _modules("broker")}
