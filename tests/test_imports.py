"""Imports go one way: no cycle between catvae_jax modules, and a command loads only its stack."""

from __future__ import annotations

import ast
import importlib.util
import json
import pathlib

from conftest import run_python

import catvae_jax


def test_data_prepare_never_imports_the_training_stack(tmp_path):
    """A real `python -m catvae_jax.data prepare` run, then the catvae_jax modules it loaded."""
    code = f"""
import json, runpy, sys
sys.argv = ["catvae_jax.data", "prepare", "--source", "synthetic", "--data_dir", {str(tmp_path)!r},
            "--image_size", "16", "--num_train", "4", "--num_validation", "2", "--num_test", "2",
            "--noprogress"]
try:
    runpy.run_module("catvae_jax.data", run_name="__main__", alter_sys=True)
except SystemExit as e:
    assert not e.code, e.code
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("catvae_jax", "orbax")))))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data set: synthetic_cats/16px_seed0_n4-2-2" in proc.stdout
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "catvae_jax.data.builders" in loaded  # it did prepare
    heavy = ("catvae_jax.train.loop", "catvae_jax.train.steps", "catvae_jax.train.checkpoint")
    heavy += ("orbax.checkpoint",)
    assert not set(heavy) & set(loaded), loaded


def _module_names() -> list[str]:
    root = pathlib.Path(catvae_jax.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _imports(name: str) -> set[str]:
    """The catvae_jax modules `name` imports anywhere (functions too), except under
    `if TYPE_CHECKING:` (annotations only, never executed)."""
    spec = importlib.util.find_spec(name)
    tree = ast.parse(pathlib.Path(spec.origin).read_text())
    known = set(_module_names())
    out = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("catvae_jax"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("catvae_jax"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    out.discard(name)
    return out


def test_the_import_graph_has_no_cycle():
    """Every import between catvae_jax modules, at module level or inside a function, points one
    way: an import inside a function that only dodges a cycle would show up here as a cycle."""
    graph = {name: _imports(name) for name in _module_names()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, set())):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            walk(name, [name])


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each catvae_jax module is the first catvae_jax module a fresh process imports (forked
    after the third-party packages are loaded, to keep it fast): a cycle between modules
    fails there with ImportError or AttributeError on a partly initialised module."""
    code = f"""
import os, sys, traceback
import absl.flags, fastapi, grain, jax, flax.nnx, optax, orbax.checkpoint, PIL.Image
import ml_collections, tensorflow_datasets, uvicorn, prometheus_client, tqdm.auto
failed = []
for name in {_module_names()!r}:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(name)
            code = 0
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print("failed:", failed)
"""
    proc = run_python(code, measured=False)  # ~70 imports: what they run, other tests measure
    assert proc.returncode == 0 and "failed: []" in proc.stdout, proc.stdout + proc.stderr[-3000:]


# The package's floors: a module may import modules of its own group (catvae_jax.<group>...) or
# of a group on a lower floor, never one beside or above it.
FLOORS = {
    "errors": 0.0, "atomic": 0.1, "images": 0.2, "config_files": 0.3, "config": 0.4,
    "compile_cache": 0.45, "cli": 0.5, "bpd_range": 0.6,
    "data": 1, "model": 1, "priors": 1,
    "model_file": 1.5,
    "train": 2,
    "inference": 3,
    "pictures": 4, "evaluation": 4,
    "after_training": 5, "sharing": 5,
    "serve": 6, "sweep": 6,
    "main": 7, "generate": 7, "reconstruct": 7, "interpolate": 7, "evaluate": 7,
    "fit_prior": 7, "choose_sampler": 7, "import_torch": 7, "bench": 7, "export": 7,
}  # fmt: skip


def _group(name: str) -> str:
    return name.split(".")[1]


def test_every_import_points_down_the_floors():
    """Folders by concern: each imports only its own modules and groups on lower floors (the
    package root's lazy `load` / `train_and_evaluate` are the library's front door)."""
    modules = [m for m in _module_names() if m != "catvae_jax"]
    assert {_group(m) for m in modules} <= set(FLOORS), "a new group needs a floor in FLOORS"
    wrong = []
    for name in modules:
        for imported in _imports(name):
            if imported == "catvae_jax" or _group(imported) == _group(name):
                continue
            if FLOORS[_group(imported)] >= FLOORS[_group(name)]:
                wrong.append(f"{name} -> {imported}")
    assert not wrong, wrong


def test_serving_loads_neither_tfds_nor_the_training_step():
    """The service loads a model and draws samples without TFDS, grain, the losses or the loop
    (its command: the package's __main__, which imports the app)."""
    code = """
import json, sys
import catvae_jax.serve.__main__
print(json.dumps(sorted(sys.modules)))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert "catvae_jax.inference" in loaded and "catvae_jax.train.checkpoint" in loaded
    heavy = {"tensorflow_datasets", "grain", "catvae_jax.data.sources", "catvae_jax.model.losses"}
    heavy |= {"catvae_jax.train.loop", "catvae_jax.train.steps", "catvae_jax.evaluation"}
    assert not heavy & loaded, heavy & loaded
