"""The package's shape: every module of hf_msd imports on its own, and no two modules import each other
(directly or through others), read from the source with `ast`."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import hf_msd

PACKAGE = Path(hf_msd.__file__).parent
#: The metric scripts are `evaluate` modules loaded by path, not part of the import graph of the package.
NOT_MODULES = ("hf_msd.metrics.accuracy.", "hf_msd.metrics.agreement.", "hf_msd.metrics.multilabel.")


def _modules() -> dict[str, Path]:
    """Module name -> file, for every .py file of the package (packages by their __init__.py)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["hf_msd", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the hf_msd modules it imports (at the top or inside a function). ``from package import
    name`` counts as importing ``package.name`` when that is a module, else ``package``; a module's imports of
    its own parent packages are left out (Python imports the parents first whatever the code says)."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {t for t in targets if t in modules and t != name and t not in parents}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` of ``graph``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_reads_relative_and_function_level_imports(tmp_path):
    package = tmp_path / "hf_msd"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .a import f\n")
    (package / "a.py").write_text("def f():\n    from .sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from .. import a\nfrom ..sub import c\n")
    (package / "sub" / "c.py").write_text("import hf_msd.a\n")
    modules = {
        "hf_msd": package / "__init__.py",
        "hf_msd.a": package / "a.py",
        "hf_msd.sub": package / "sub" / "__init__.py",
        "hf_msd.sub.b": package / "sub" / "b.py",
        "hf_msd.sub.c": package / "sub" / "c.py",
    }
    assert import_graph(modules) == {
        "hf_msd": {"hf_msd.a"},
        "hf_msd.a": {"hf_msd.sub.b"},
        "hf_msd.sub": set(),
        "hf_msd.sub.b": {"hf_msd.a", "hf_msd.sub.c"},
        "hf_msd.sub.c": {"hf_msd.a"},
    }
    assert find_cycle(import_graph(modules)) == ["hf_msd.a", "hf_msd.sub.b", "hf_msd.a"]


def test_no_import_cycle_in_hf_msd():
    graph = import_graph({k: v for k, v in MODULES.items() if not k.startswith(NOT_MODULES)})
    assert find_cycle(graph) is None


@pytest.mark.parametrize("name", [m for m in MODULES if not m.startswith(NOT_MODULES)])
def test_every_module_imports(name):
    assert importlib.import_module(name).__name__ == name


def test_the_listing_covers_what_python_finds():
    found = {m.name for m in pkgutil.walk_packages(hf_msd.__path__, "hf_msd.")}
    assert found - set(MODULES) == set()


def test_former_public_names_still_import():
    from hf_msd import ArchitectureAdapter, ModelPreset, register_architecture, register_model_preset

    assert ModelPreset is ArchitectureAdapter and register_model_preset is register_architecture


#: The layers of hf_msd, lowest first: a module may import its own layer and those below, never one above.
#: The leaves import nothing of hf_msd (or only each other). The pipeline file is uploaded beside a model as
#: remote code and imports nothing of hf_msd, like the models. The teacher-output cache sits below
#: distillation: the population saliency reads cached teacher logits, and the cache needs only the leaves,
#: the data's views and the architectures. evaluation / hub / metrics serve the trainers and the workflow
#: and import neither.
LAYERS = (
    ("hf_msd.constants", "hf_msd.errors", "hf_msd.targets", "hf_msd.recompile_limit", "hf_msd.progress_bars"),
    ("hf_msd.modalities",),
    ("hf_msd.architectures",),
    ("hf_msd.models", "hf_msd.pipelines"),
    ("hf_msd.data",),
    ("hf_msd.teacher_outputs",),
    ("hf_msd.distillation",),
    ("hf_msd.evaluation", "hf_msd.hub", "hf_msd.metrics"),
    ("hf_msd.trainers",),
    ("hf_msd.experiment",),
)


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the part that holds ``module``."""
    for index, parts in enumerate(LAYERS):
        if any(module == part or module.startswith(f"{part}.") for part in parts):
            return index
    raise KeyError(f"{module} is in no layer of LAYERS: add its part there.")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every ``importer -> imported`` of ``graph`` that runs up the layers (the package root, which gathers
    the public names, is left out)."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module != "hf_msd"
        for target in targets
        if layer_of(target) > layer_of(module)
    )


def test_upward_imports_are_found():
    graph = {
        "hf_msd.data.collator": {"hf_msd.distillation.losses", "hf_msd.constants"},
        "hf_msd.evaluation.speed": {"hf_msd.trainers.compilation"},
        "hf_msd.trainers.compilation": {"hf_msd.recompile_limit"},
        "hf_msd.hub.model_card": {"hf_msd.distillation.saliency", "hf_msd.evaluation.speed"},
    }
    assert upward_imports(graph) == [
        "hf_msd.data.collator -> hf_msd.distillation.losses",
        "hf_msd.evaluation.speed -> hf_msd.trainers.compilation",
    ]


def test_every_module_has_a_layer():
    for module in MODULES:
        if module != "hf_msd":
            layer_of(module)


def test_no_import_runs_up_the_layers():
    graph = import_graph({k: v for k, v in MODULES.items() if not k.startswith(NOT_MODULES)})
    assert upward_imports(graph) == []
