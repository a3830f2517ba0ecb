"""The shape of the code: the kernel (the method's math) imports nothing from the shell (scripts, run
folders, I/O), no module imports itself in a cycle, and the kernel's and the training loop's functions
stay short enough to read against the papers."""
import ast
import glob
import os

from helpers import HERE

KERNEL = {"schedules", "losses", "samplers", "gaussian", "zoom", "nn_unet", "metrics"}
SHORT = KERNEL | {"trainer"}
MAX_LINES = 60


def project_modules():
    return {os.path.basename(p)[:-3]: ast.parse(open(p).read()) for p in glob.glob(os.path.join(HERE, "*.py"))}


def imports(tree, project):
    """The project modules a module imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(project)


def test_kernel_imports_only_the_kernel():
    mods = project_modules()
    assert KERNEL <= set(mods), KERNEL - set(mods)
    for name in KERNEL:
        assert imports(mods[name], mods) <= KERNEL, (name, imports(mods[name], mods) - KERNEL)


def test_no_import_cycles():
    mods = project_modules()
    graph = {name: imports(tree, mods) - {name} for name, tree in mods.items()}

    def reaches(start, goal, seen):
        for nxt in graph[start]:
            if nxt == goal or (nxt not in seen and not seen.add(nxt) and reaches(nxt, goal, seen)):
                return True
        return False
    cycles = sorted(name for name in graph if reaches(name, name, set()))
    assert not cycles, f"modules in an import cycle: {cycles}"


def test_kernel_and_loop_functions_are_short():
    long = []
    for name, tree in project_modules().items():
        if name in SHORT:
            long += [f"{name}.{n.name}: {n.end_lineno - n.lineno + 1} lines" for n in ast.walk(tree)
                     if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > MAX_LINES]
    assert not long, long


MAX_MODULE_LINES = 350
# The training side and the inference side: training samples its progress grids through generate.py (network ->
# images) and never through the inference modules, which resolve a checkpoint's sampling and score images.
TRAINING = {"train_ddpm", "train_zoom_nearest", "train_zoom_bilinear", "distill", "trainer", "train_args",
            "train_state", "objectives", "consistency", "runs"}
INFERENCE = {"sample", "sample_spec", "fid", "levels", "plots", "bench"}


def test_every_module_of_the_shell_and_the_kernel_is_short():
    sizes = {os.path.basename(p): sum(1 for _ in open(p)) for p in glob.glob(os.path.join(HERE, "*.py"))}
    assert len(sizes) > 20
    long = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them along a seam): {long}"


def test_training_does_not_import_inference():
    mods = project_modules()
    assert TRAINING <= set(mods) and INFERENCE <= set(mods), (TRAINING | INFERENCE) - set(mods)
    graph = {name: imports(tree, mods) - {name} for name, tree in mods.items()}
    for start in TRAINING:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        assert not seen & INFERENCE, f"{start} reaches inference modules {sorted(seen & INFERENCE)}"
