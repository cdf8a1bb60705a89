"""docs/design.md stays true: every module of the project is in its floor table and every module in the table exists;
no module imports one on a higher floor, there are no cycles, floors 0 and 1 import no torch or transformers at
module level, no module but the task table is over ~400 lines, each folder-layout name is spelled in one place, and
nothing changes the process (warnings, logging, signals) on import."""

import ast
import os
import re
import subprocess
import sys

from conftest import ROOT

DESIGN = open(os.path.join(ROOT, "docs", "design.md"), encoding="utf-8").read()
TABLE = {m: int(f) for f, m in re.findall(r"^\| (\d) \| `([^`]+\.py)` \|", DESIGN, flags=re.M)}
HEAVY = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "safetensors", "sklearn")


def module_name(path):
    name = path[:-3].replace(os.sep, ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def only_a_docstring(path):
    body = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read()).body
    return len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)


def project_files():
    """Every Python file of the project but the tests and the tools beside it (scripts/, bench/), and but a
    package's __init__.py that holds only its docstring."""
    files = [f for f in os.listdir(ROOT) if f.endswith(".py")]
    for where, _, names in os.walk(os.path.join(ROOT, "keys_values")):
        files += [os.path.relpath(os.path.join(where, n), ROOT) for n in names if n.endswith(".py")]
    return sorted(f for f in files if not (f.endswith("__init__.py") and only_a_docstring(f)))


def imports(path, top_level_only=False):
    """The project modules a file imports (all of them, or only those imported at module level)."""
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_the_table_lists_every_module_and_only_those():
    assert sorted(TABLE) == project_files()


def test_no_import_goes_up_a_floor_and_there_is_no_cycle():
    floor = {module_name(p): f for p, f in TABLE.items()}
    graph = {}
    for path, f in TABLE.items():
        me = module_name(path)
        used = {m for m in imports(path) if m in floor and m != me}
        for m in used:
            assert floor[m] <= f, f"{path} (floor {f}) imports {m} (floor {floor[m]})"
        graph[me] = used
    seen, done = set(), set()

    def visit(node, stack):
        assert node not in stack, f"an import cycle: {' -> '.join([*stack, node])}"
        if node in done:
            return
        for nxt in graph.get(node, ()):
            visit(nxt, [*stack, node])
        done.add(node)

    for node in graph:
        visit(node, [])
        seen.add(node)


def test_the_lower_floors_load_no_heavy_library_on_import():
    for path, f in TABLE.items():
        if f <= 1:
            heavy = [m for m in imports(path, top_level_only=True) if m.split(".")[0] in HEAVY]
            assert not heavy, f"{path} imports {heavy} at module level"
    code = ("import sys, warnings, signal, logging; before = (list(warnings.filters), signal.getsignal(signal.SIGTERM));"
            "import llama2_classification_multi_tasks, llama2_classification_multi_tasks_inference, study, get_eval_tasks;"
            "assert (list(warnings.filters), signal.getsignal(signal.SIGTERM)) == before, 'import changed the process';"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]", f"importing the scripts loads {p.stdout.strip()}"


def test_no_module_is_a_drawer():
    for path in project_files():
        n = sum(1 for _ in open(os.path.join(ROOT, path), encoding="utf-8"))
        assert n <= 420 or path == "prompts.py", f"{path} has {n} lines"


def test_each_layout_name_is_spelled_in_one_place():
    """The experiment folder's file names appear as string literals only in experiment/layout.py."""
    names = ("identity.json", "experiment.json", "assets", "results.pkl", "results.json", "adapter_norms.json",
             "_metrics_update.json", "_predictions.jsonl", "study-logs", "all_eval_results.json", ".lock")
    for path in project_files():
        if path == os.path.join("keys_values", "experiment", "layout.py"):
            continue
        tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                assert node.value not in names, f"{path} spells {node.value!r}: ask experiment/layout.py"


def test_the_environment_is_read_in_one_place():
    for path in project_files():
        if path == os.path.join("keys_values", "environment.py"):
            continue
        text = open(os.path.join(ROOT, path), encoding="utf-8").read()
        reads = re.findall(r"os\.environ(?:\.get|\[)|os\.getenv", text)
        assert not reads, f"{path} reads the environment: ask keys_values/environment.py"
