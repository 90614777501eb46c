"""The frontends' walls, read from the imports of every module (ast, nothing is imported): a transport folder
(grpc/, rest/) imports no other transport folder, and what the protocols share (the protocol cores, the tensor
checks, listening, admission) imports no transport at all, so that each transport is a door over one core."""

from __future__ import annotations

import ast
from pathlib import Path

import mindserve

PACKAGE_ROOT = Path(mindserve.__file__).parent
FRONTENDS = PACKAGE_ROOT / "_frontends"
TRANSPORTS = ("grpc", "rest")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports, relative imports resolved; for ``from x import
    y``, both ``x`` and ``x.y`` (y may be a module)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names)
    return found


def _transport_of(module: str) -> str | None:
    """The transport folder a module of mindserve._frontends lies in, or None."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[:2] == ["mindserve", "_frontends"] and parts[2] in TRANSPORTS:
        return parts[2]
    return None


def violations(path: Path, source: str) -> list[str]:
    """What the module at ``path`` imports across a wall, as "module imports other" lines."""
    module = _module_name(path)
    own = _transport_of(module)
    found = []
    for imported in sorted(imported_modules(source, module, path.name == "__init__.py")):
        other = _transport_of(imported)
        if other is not None and other != own:
            found.append(f"{module} imports {imported}")
    return found


def _frontend_modules() -> list[Path]:
    return sorted(FRONTENDS.rglob("*.py"))


def test_every_frontend_module_is_read():
    modules = {_module_name(path) for path in _frontend_modules()}
    # the rooms the walls are about, present under the names the test reads
    for expected in (
        "mindserve._frontends.grpc.ms_service",
        "mindserve._frontends.rest.server",
        "mindserve._frontends.rest.ms_routes",
        "mindserve._frontends.mindspore.predict",
        "mindserve._frontends.oip.infer",
        "mindserve._frontends.tensor_checks",
        "mindserve._frontends.listen",
        "mindserve._frontends.admission",
    ):
        assert expected in modules


def test_no_module_imports_across_the_transport_walls():
    found = [line for path in _frontend_modules() for line in violations(path, path.read_text())]
    assert found == []


def test_the_shared_modules_import_no_transport():
    shared = [path for path in _frontend_modules() if _transport_of(_module_name(path)) is None]
    assert len(shared) > 20
    found = [line for path in shared for line in violations(path, path.read_text())]
    assert found == []


def test_the_check_sees_every_form_of_import():
    """The reader catches what the walls forbid, however it is written."""
    grpc_module = FRONTENDS / "grpc" / "example.py"
    rest_package = FRONTENDS / "rest" / "__init__.py"
    shared_module = FRONTENDS / "oip" / "example.py"
    assert violations(grpc_module, "from mindserve._frontends.rest import common\n") == [
        "mindserve._frontends.grpc.example imports mindserve._frontends.rest",
        "mindserve._frontends.grpc.example imports mindserve._frontends.rest.common",
    ]
    assert violations(grpc_module, "import mindserve._frontends.rest.server as s\n") == [
        "mindserve._frontends.grpc.example imports mindserve._frontends.rest.server"
    ]
    assert violations(grpc_module, "from ..rest.common import dumps\n") == [
        "mindserve._frontends.grpc.example imports mindserve._frontends.rest.common",
        "mindserve._frontends.grpc.example imports mindserve._frontends.rest.common.dumps",
    ]
    assert violations(rest_package, "from ..grpc.server import _read\n") == [
        "mindserve._frontends.rest imports mindserve._frontends.grpc.server",
        "mindserve._frontends.rest imports mindserve._frontends.grpc.server._read",
    ]
    assert violations(grpc_module, "def late():\n    from mindserve._frontends.rest import server\n") == [
        "mindserve._frontends.grpc.example imports mindserve._frontends.rest",
        "mindserve._frontends.grpc.example imports mindserve._frontends.rest.server",
    ]
    assert violations(shared_module, "from mindserve._frontends import grpc\n") == [
        "mindserve._frontends.oip.example imports mindserve._frontends.grpc"
    ]
    # within one's own folder, and from the shared modules, imports are free
    assert (
        violations(
            grpc_module,
            "from mindserve._frontends.grpc.status import status_of\nfrom mindserve._frontends.oip import infer\n",
        )
        == []
    )
