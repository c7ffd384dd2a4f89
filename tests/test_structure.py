"""The codebase's structural rules: no import cycles, layer facts only in the registry, numpydoc on the API."""

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import fastdecomp

PACKAGE = Path(fastdecomp.__file__).resolve().parent


def package_modules():
    return [info.name for info in pkgutil.walk_packages(fastdecomp.__path__, "fastdecomp.")]


def imported_modules(name):
    """Modules of the package that ``name`` imports, at its top or inside its functions."""
    path = Path(importlib.util.find_spec(name).origin)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if importlib.util.find_spec(base) and _is_module(candidate) else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("fastdecomp.") and m != name}


def _is_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_no_module_imports_another_in_a_circle():
    graph = {name: imported_modules(name) - {"fastdecomp"} for name in package_modules()}
    state = {}

    def visit(name, path):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "import cycle: " + " -> ".join(path + [name])
        state[name] = "open"
        for other in sorted(graph.get(name, ())):
            visit(other, path + [name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


def test_no_module_but_the_registry_asks_a_layer_its_kind():
    """Every fact about a layer kind lives on its class in layers.py: nothing else compares kinds."""
    asks = re.compile(r"(?<!dtype)\.kind\s*(==|!=|(not\s+)?in\b)|CHANNEL_PASS_THROUGH")
    offenders = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
                 for path in PACKAGE.rglob("*.py") if path.name != "layers.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1) if asks.search(line)]
    assert not offenders, "\n".join(offenders)


def kind_literals(tree, kinds):
    """``(line, text)`` of each string naming a layer kind where code asks or picks a kind by name: compared
    with something about a kind, as a key of ``KINDS``, or as the kind given to a graph builder's ``add``."""
    import ast

    def names_a_kind(node):
        return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in kinds

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any("kind" in ast.unparse(side) for side in sides):
                yield from ((side.lineno, ast.unparse(node)) for side in sides if names_a_kind(side))
        elif isinstance(node, ast.Subscript) and "KINDS" in ast.unparse(node.value) and names_a_kind(node.slice):
            yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add" \
                and len(node.args) > 1 and names_a_kind(node.args[1]):
            yield node.lineno, ast.unparse(node)


def test_no_kind_is_named_outside_the_registry():
    """A kind is asked for by its class (``InputKind.INPUT_KIND``, ``KINDS[GroupedConv2DKind.kind]``) or by its
    attributes, never by a string literal, outside layers.py: the ONNX reader and the saves included."""
    import ast

    from fastdecomp.layers import KINDS

    offenders = [f"{path.relative_to(PACKAGE)}:{line}: {text}" for path in PACKAGE.rglob("*.py")
                 if path.name != "layers.py"
                 for line, text in kind_literals(ast.parse(path.read_text()), set(KINDS))]
    assert not offenders, "\n".join(offenders)


def test_the_kind_literal_check_catches_each_way_of_naming_a_kind():
    import ast

    planted = """
if kind == "avgpool": pass
if g["kind"] == "input": pass
handler = KINDS["batchnorm"]
reader.add(name, "conv2d", [x], {}, {})
modes = ("add", "remove")
seen.add("relu")
"""
    found = [line for line, _ in kind_literals(ast.parse(planted), {"avgpool", "input", "batchnorm", "conv2d", "add",
                                                                    "relu"})]
    assert found == [2, 3, 4, 5]


def public_callables():
    for name in package_modules():
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        names = exported if exported is not None else [n for n in vars(module) if not n.startswith("_")]
        for attribute in names:
            obj = getattr(module, attribute, None)
            if getattr(obj, "__module__", None) != name:
                continue
            if inspect.isclass(obj):
                yield f"{name}.{attribute}", obj
                for method, value in vars(obj).items():
                    if not method.startswith("_") and callable(getattr(obj, method)):
                        yield f"{name}.{attribute}.{method}", getattr(obj, method)
            elif inspect.isfunction(obj):
                yield f"{name}.{attribute}", obj


def test_every_public_callable_with_several_parameters_documents_them():
    missing = []
    for name, obj in public_callables():
        try:
            parameters = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
        except (TypeError, ValueError):
            continue
        if len(parameters) > 1 and "Parameters\n----------" not in (inspect.getdoc(obj) or ""):
            missing.append(name)
    assert not missing, f"{len(missing)} public callables lack a numpydoc Parameters section:\n" + "\n".join(missing)
