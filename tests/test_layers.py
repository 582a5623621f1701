"""Imports point one way: down the layers. This test walks every import of every module of mlopt (module level
and inside functions alike, read with `ast`) and fails on any that runs from a lower layer to a higher one.

The layer order, lowest first (docs/writing-a-rule.md, "Layers", says the same). A module may import from its
own layer and the ones below it; siblings on one line do not import each other.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYERS = [
    ("foundation", ["mlopt._version", "mlopt.errors", "mlopt.compute_units", "mlopt.signals", "mlopt.selection",
                    "mlopt.pause_points"]),
    ("package", ["mlopt.package"]),  # .mlpackage I/O: reading, writing, weight files
    ("graph", ["mlopt.graph"]),  # the graph contract, its saved-spec adapter, validation
    ("patterns", ["mlopt.patterns"]),  # matching machinery
    ("numerics", ["mlopt.numerics"]),  # interpreter, self-check and proofs
    ("rewrites", ["mlopt.rewrites"]),  # the builder contract, the protobuf builder, splicing
    ("rules", ["mlopt.rules"]),  # one module per rewrite; the registry
    ("report", ["mlopt.report"]),  # what a run says
    ("pipelines", ["mlopt.engine", "mlopt.coreml"]),  # saved specs; coremltools' pass pipeline
    ("analyses", ["mlopt.analyses"]),  # read-only analyses (verify, ...)
    ("api", ["mlopt.api"]),
    ("batch", ["mlopt.batch"]),
    ("cli", ["mlopt.cli"]),
    ("entry", ["mlopt.__main__", "mlopt"]),  # the package's lazy public names
]


def layer_of(module):
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if prefix != "mlopt" and (module == prefix or module.startswith(prefix + ".")):
                return rank
    return len(LAYERS) - 1 if module == "mlopt" else None


def modules():
    for folder, _, files in os.walk(os.path.join(ROOT, "mlopt")):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
                package = rel.endswith(".__init__")
                yield path, rel[: -len(".__init__")] if package else rel, package


def imported(module, is_package, node):
    """The mlopt modules an import statement names, resolved against `module`."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "mlopt"]
    base = module if is_package else module.rpartition(".")[0]
    if node.level:
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    if target.split(".")[0] != "mlopt":
        return []
    if node.module is None:
        return [f"{target}.{a.name}" for a in node.names]  # `from . import x` imports the submodule x
    return [target]


def upward_imports():
    found = []
    for path, module, is_package in modules():
        own = layer_of(module)
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported(module, is_package, node):
                    theirs = layer_of(target)
                    if theirs is not None and own is not None and theirs > own:
                        found.append(f"{module} ({LAYERS[own][0]}) imports {target} ({LAYERS[theirs][0]}), line {node.lineno}")
    return found


def test_every_module_has_a_layer():
    assert [m for _, m, _ in modules() if layer_of(m) is None] == []


def test_no_import_runs_up_the_layers():
    assert upward_imports() == []


@pytest.mark.parametrize("module, target, upward", [
    ("mlopt.numerics.row_free", "mlopt.rewrites.spec_builder", True),
    ("mlopt.rewrites.apply", "mlopt.graph.spec_graph", False),
    ("mlopt.batch", "mlopt.cli.signals", True),
])
def test_the_walk_sees_direction(module, target, upward):
    assert (layer_of(target) > layer_of(module)) is upward
