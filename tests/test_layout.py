"""The layout holds: layers import downwards only, the math is pure, protobuf stays in the
transport, and no class or function in service/ outgrows a reader (docs/design.md)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "service"
# Each package imports only from packages of a lower rank (or its own).
RANKS = {
    "service.errors": 0, "service.sde": 0, "service.tls": 0, "service.config": 0,
    "service.backends": 1,
    "service.requests": 2,
    "service.batching": 3, "service.cache": 3, "service.tenancy": 3,
    "service.pipeline": 4,
    "service.jobs": 5, "service.metrics": 5,
    "service.transport": 6, "service.transport.grpc": 6,
    "service.transport.http": 7,
    "service.server": 8, "service.client": 8,
    "service.loadtest": 9,
    "service.cli": 10, "service.testing": 10,
}
PROTOBUF_USERS = ("service.transport", "service.client", "service.loadtest", "service.server", "service.cli", "service.testing")
MAX_CLASS_LINES, MAX_FUNCTION_LINES = 200, 60


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(SERVICE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return found


def package_of(module: str) -> str:
    parts = module.split(".")
    depth = 3 if len(parts) >= 3 and parts[1] == "transport" else 2
    return ".".join(parts[:depth])


def imported(path: Path) -> list[str]:
    """The modules a file imports, `from service import x` read as service.x."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [f"{node.module}.{a.name}" for a in node.names] if node.module == "service" else [node.module]
    return names


def test_every_package_has_a_rank():
    assert sorted({package_of(m) for m, _ in modules()} - {"service"} - set(RANKS)) == []


@pytest.mark.parametrize("module, path", modules(), ids=[m for m, _ in modules()])
def test_imports_go_down_the_layers(module, path):
    if module == "service":
        return
    own = package_of(module)
    upward = [name for name in imported(path) if name.startswith("service.")
              and package_of(name) != own and RANKS[package_of(name)] >= RANKS[own]]
    assert upward == [], f"{module} (rank {RANKS[own]}) imports from its own level or above"


def test_the_math_imports_numpy_and_the_standard_library_only():
    for module, path in modules():
        if package_of(module) == "service.sde":
            foreign = [n for n in imported(path) if n.split(".")[0] not in sys.stdlib_module_names
                       and n.split(".")[0] != "numpy" and not n.startswith("service.sde")]
            assert foreign == [], module


def test_the_api_s_messages_stay_in_the_transport_and_its_clients():
    users = [m for m, path in modules() if any(n.startswith("sdedit.") for n in imported(path))
             and not m.startswith(PROTOBUF_USERS)]
    assert users == []


def long_definitions() -> list[str]:
    found = []
    for module, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                lines = node.end_lineno - node.lineno + 1
                reason = any(line.strip().startswith("Long:") for line in (ast.get_docstring(node) or "").splitlines())
                if lines > limit and not reason:
                    found.append(f"{module}.{node.name}: {lines} lines (over {limit}; or say why in a 'Long:' docstring line)")
    return found


def test_no_class_or_function_outgrows_a_reader():
    assert long_definitions() == []


def test_no_test_file_imports_another_and_no_helper_is_named_like_a_test():
    """Shared helpers live in tests/helpers.py (and the other non-test modules of tests/);
    pytest would collect a test_* name imported into a test module as a test of its own."""
    problems = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[-1].startswith("test_") or node.module == "tests.conftest":
                    problems.append(f"{path.name} imports {node.module}")
                problems += [f"{path.name} imports {a.name} from {node.module}" for a in node.names if a.name.startswith("test")]
            elif isinstance(node, ast.Import):
                problems += [f"{path.name} imports {a.name}" for a in node.names if a.name.split(".")[-1].startswith("test_")]
    assert problems == []
