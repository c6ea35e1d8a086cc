"""Import directions of STYLE.md §4: a forbidden arrow turns the build red."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "qubes"

# package -> packages (besides itself, qubes.errors and qubes.util) it may import
ALLOWED = {
    "qubes.util": set(),
    "qubes.props": set(),
    "qubes.model": {"qubes.props", "qubes.vmm.base", "qubes.storage.base"},
    "qubes.store": {"qubes.model"},
    "qubes.vmm": {"qubes.vmm"},
    "qubes.storage": {"qubes.storage"},
    "qubes.backup": {"qubes.model", "qubes.store.codec", "qubes.storage.base", "qubes.vmm.base"},
    "qubes.ops": {"qubes.model", "qubes.store", "qubes.storage", "qubes.vmm", "qubes.devices",
                  "qubes.backup"},
    "qubes.tools": {"qubes"},
}
FORBIDDEN_ANYWHERE = {"libvirt": "qubes.vmm.libvirt"}
MODEL_FORBIDDEN = {"lxml", "libvirt", "subprocess", "xml"}


def modules():
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        yield name, ast.parse(path.read_text(encoding="utf-8"))


def imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def layer_of(module: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def test_import_directions():
    bad = []
    for name, tree in modules():
        layer = layer_of(name)
        if layer is None:
            continue
        allowed = ALLOWED[layer] | {layer, "qubes.errors", "qubes.util"}
        for target in imports(tree):
            if not target.startswith("qubes.") or layer_of(target) == layer:
                continue
            if target.startswith(("qubes.errors", "qubes.util")) and layer != "qubes.util":
                continue
            if not any(target == a or target.startswith(a + ".") or a.startswith(target + ".")
                       for a in allowed):
                bad.append(f"{name} imports {target}")
    assert not bad, "\n".join(sorted(set(bad)))


def test_libvirt_only_in_vmm_libvirt_and_nothing_imports_tools():
    bad = []
    for name, tree in modules():
        for target in imports(tree):
            root = target.split(".")[0]
            if root in FORBIDDEN_ANYWHERE and name != FORBIDDEN_ANYWHERE[root]:
                bad.append(f"{name} imports {target}")
            if target.startswith("qubes.tools") and not name.startswith("qubes.tools"):
                bad.append(f"{name} imports {target}")
            if target in ("argparse",) and not name.startswith("qubes.tools"):
                bad.append(f"library module {name} imports argparse")
    assert not bad, "\n".join(bad)


def test_model_is_pure():
    bad = []
    for name, tree in modules():
        if name.startswith(("qubes.model", "qubes.props")):
            for target in imports(tree):
                if target.split(".")[0] in MODEL_FORBIDDEN:
                    bad.append(f"{name} imports {target}")
    assert not bad, "\n".join(bad)


def test_library_never_exits_or_prints():
    bad = []
    for name, tree in modules():
        if name.startswith("qubes.tools"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("print", "exit"):
                bad.append(f"{name}: {node.func.id}() at line {node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr == "exit" \
                    and isinstance(node.value, ast.Name) and node.value.id == "sys":
                bad.append(f"{name}: sys.exit at line {node.lineno}")
    assert not bad, "\n".join(bad)
