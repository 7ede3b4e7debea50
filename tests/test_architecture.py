"""docs/architecture.md stays true: its import rules hold, it names every module, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "diff2in1"
DOC = ROOT / "docs" / "architecture.md"

# package (first path part under src/diff2in1) -> packages it may never import
MAX_LINES = 600
FORBIDDEN = {
    "imaging": {"data", "inference", "stages", "training", "workflows", "app", "cli"},
    "data": {"inference", "stages", "training", "workflows", "app", "cli"},
    "heads": {"inference", "stages", "training", "workflows", "app", "cli"},
    "inference": {"stages", "training", "workflows", "app", "cli"},
    "stages": {"workflows", "app", "cli"},
    "training": {"stages", "workflows", "app", "cli"},
}


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py"))


def _imported(path: Path) -> set[str]:
    """Absolute names (under diff2in1) of everything `path` imports, at any depth."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    if parts[-1] == "__init__":
        package = parts[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("diff2in1")}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_follow_the_data_flow(path: Path) -> None:
    where = path.relative_to(PKG).parts[0].removesuffix(".py")
    forbidden = FORBIDDEN.get(where, set())
    bad = sorted(
        n for n in _imported(path) if len(n.split(".")) > 1 and n.split(".")[1] in forbidden
    )
    assert not bad, f"{path.relative_to(PKG)} imports {bad} (docs/architecture.md: what may import what)"


def test_the_architecture_page_names_every_module() -> None:
    text = DOC.read_text()
    missing = []
    for path in _modules():
        rel = path.relative_to(PKG)
        if rel.name == "__init__.py":
            continue
        top = rel.parts[0]
        named = f"{top}/" in text if len(rel.parts) > 1 else f"`{rel.name}`" in text
        if not named:
            missing.append(str(rel))
    assert not missing, f"docs/architecture.md does not mention {missing}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_every_import_of_the_package_resolves(path: Path) -> None:
    """Imports inside functions run late: a moved module must not leave one pointing nowhere."""
    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        rel = path.relative_to(PKG.parent).with_suffix("")
        package = list(rel.parts[:-1]) if rel.parts[-1] != "__init__" else list(rel.parts[:-1])
        base = package[: len(package) - node.level + 1] if node.level else []
        target = ".".join(base + ([node.module] if node.module else []))
        if not target.startswith("diff2in1"):
            continue
        module_file = PKG.parent.joinpath(*target.split("."))
        if not (module_file.with_suffix(".py").is_file() or (module_file / "__init__.py").is_file()):
            missing.append(f"line {node.lineno}: {target}")
    assert not missing, f"{path.relative_to(PKG)} imports modules that do not exist: {missing}"


def test_modules_stay_small_or_say_why() -> None:
    long = []
    for path in _modules():
        text = path.read_text()
        if text.count("\n") > MAX_LINES:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "longer than" not in doc:  # the docstring must say why it is one module
                long.append(f"{path.relative_to(PKG)} ({text.count(chr(10))} lines)")
    assert not long, f"modules over {MAX_LINES} lines without a reason in their docstring: {long}"
