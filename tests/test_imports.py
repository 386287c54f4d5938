"""The import graph of sln_jax and data_prep: no cycle, and every import points one way.

Floors, bottom up (a module may import its own floor and the floors below, never above):

0. ground floor, NumPy-only (no JAX, Flax, TensorFlow, no model): ``atomic``, ``canvas``,
   ``images``, ``layering``, ``semdist``, ``depth_order``, ``rle``, ``tfrecord``,
   ``records``, ``detections``, ``cli``, ``semantic``.
1. ``sln_jax.ops``, ``sln_jax.models`` (Flax modules only), ``losses``, ``input_pipeline``,
   ``postprocess``, ``evaluation``, ``visualize``, ``checkpoints``, ``train_state``.
2. ``infer`` (Predictor), ``evaluate`` (CLI).
3. ``train``; 4. ``main``, ``demo``.

``sln_jax`` never imports ``data_prep`` (the ``demo`` entry point runs the data_prep command
lines); ``data_prep`` may import only the ground floor and ``visualize``.
Imports inside functions count too: they are still dependencies.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

GROUND = {"sln_jax.atomic", "sln_jax.canvas", "sln_jax.images", "sln_jax.layering",
          "sln_jax.semdist", "sln_jax.depth_order", "sln_jax.rle", "sln_jax.tfrecord",
          "sln_jax.records", "sln_jax.detections", "sln_jax.cli", "sln_jax.semantic"}
# Third-party packages the ground floor must not import.
HEAVY = {"jax", "flax", "optax", "orbax", "tensorflow", "tensorflow_datasets"}
FLOOR = {"sln_jax.infer": 2, "sln_jax.evaluate": 2, "sln_jax.train": 3,
         "sln_jax.main": 4, "sln_jax.demo": 4, "sln_jax": 0}
DATA_PREP_MAY_USE = GROUND | {"sln_jax.visualize"}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in ("sln_jax", "data_prep"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(path: pathlib.Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(project modules, top-level third-party packages) that ``path`` imports anywhere."""
    project, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # ``from package import module`` depends on the module; ``from module import
            # name`` (or ``from package import name``) on the module / package itself.
            submodules = [f"{node.module}.{a.name}" for a in node.names
                          if f"{node.module}.{a.name}" in known]
            names = submodules if len(submodules) == len(node.names) else \
                [node.module] + submodules
        for name in names:
            if name in known:
                project.add(name)
            elif name.split(".")[0] not in ("sln_jax", "data_prep"):
                external.add(name.split(".")[0])
    return project, external


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = _modules()
    known = set(modules)
    graph, external = {}, {}
    for name, path in modules.items():
        graph[name], external[name] = _imports(path, known)
        graph[name].discard(name)
        # Importing a module imports its packages' __init__ too; they are kept empty.
    return graph, external


def _floor(module: str) -> int:
    if module in GROUND:
        return 0
    return FLOOR.get(module, 1)


def test_no_import_cycle():
    graph, _ = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_imports_point_one_way():
    graph, external = _graph()
    wrong = []
    for module, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if module.startswith("sln_jax") and dep.startswith("data_prep"):
                wrong.append(f"{module} -> {dep} (sln_jax never imports data_prep)")
            elif module.startswith("data_prep") and dep.startswith("sln_jax"):
                if dep not in DATA_PREP_MAY_USE:
                    wrong.append(f"{module} -> {dep} (data_prep uses the ground floor only)")
            elif module.startswith("sln_jax") and _floor(dep) > _floor(module):
                wrong.append(f"{module} (floor {_floor(module)}) -> {dep} (floor {_floor(dep)})")
            elif module.startswith("sln_jax.models") and not dep.startswith(
                    ("sln_jax.models", "sln_jax.ops")):
                wrong.append(f"{module} -> {dep} (models/ holds Flax modules only)")
    for module in sorted(GROUND):
        heavy = external.get(module, set()) & HEAVY
        # canvas.content_size_tf and records.parse_tf import TensorFlow inside the function,
        # for tf.data only; everything else of theirs is NumPy.
        if module in ("sln_jax.canvas", "sln_jax.records"):
            heavy -= {"tensorflow"}
        if heavy:
            wrong.append(f"{module} (ground floor) imports {sorted(heavy)}")
    assert not wrong, "\n".join(wrong)


def test_models_hold_flax_modules_only():
    models = ROOT / "sln_jax" / "models"
    assert not (models / "postprocess.py").exists()
    graph, _ = _graph()
    for module, deps in graph.items():
        if module.startswith("sln_jax.models"):
            assert all(d.startswith(("sln_jax.models", "sln_jax.ops")) for d in deps), \
                (module, deps)
