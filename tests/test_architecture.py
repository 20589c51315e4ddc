"""The package layout's rules (docs/architecture.md), checked on the installed package:
no import cycles among engine's modules (lazy imports inside functions count too), the
runtime does not import the converter, the server or the trainer, and running a model loads
none of torch, transformers, the trainer or the server."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import engine

ROOT = Path(engine.__file__).resolve().parent
# Modules a model run needs; none of them may import what is listed in FORBIDDEN_FOR_RUNTIME.
RUNTIME = ("engine", "engine.kernels", "engine.quant", "engine.formats", "engine.runtime")
FORBIDDEN_FOR_RUNTIME = ("torch", "transformers", "ternary_train", "ternary_bench", "engine.serve",
                         "engine.convert", "engine.cli", "engine.ppl", "fastapi", "uvicorn", "ray")


def module_names() -> dict[str, Path]:
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def imports_of(name: str, path: Path, known) -> set[str]:
    """Every module `name` imports, at top level or inside a function, resolved to the most
    specific name: `from engine.formats import tpk` -> engine.formats.tpk."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = module_names()
    known = set(mods) | {f"engine.{p.name.split('.')[0]}" for p in ROOT.glob("*.so")}  # _kernels
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or self-loops."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    g = graph()
    assert "engine.runtime.model" in g and "engine.kernels" in g["engine.runtime.model"]
    assert "engine.formats.tpk" in g["engine.convert"]


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_runtime_imports_no_converter_server_or_trainer():
    bad = []
    for mod, deps in graph().items():
        if mod != "engine" and not any(mod == r or mod.startswith(r + ".") for r in RUNTIME[1:]):
            continue
        bad += [(mod, d) for d in deps
                if any(d == f or d.startswith(f + ".") for f in FORBIDDEN_FOR_RUNTIME)]
    assert bad == []


RUN = """
import json, sys
from engine import Engine
from engine.cli import run_main
eng = Engine()
eng.forward([1, 2, 3])
eng.generate("Once upon a time", max_new_tokens=4, temperature=0)
assert run_main(["Once upon a time", "-n", "4", "--seed", "0"]) == 0
print(json.dumps(sorted(sys.modules)))
"""


def test_running_a_model_loads_no_torch_transformers_trainer_or_server():
    r = subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT.parent)))
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    banned = ("torch", "transformers", "ternary_train", "engine.serve", "fastapi", "uvicorn", "ray")
    assert [m for m in loaded if any(m == b or m.startswith(b + ".") for b in banned)] == []


def _function_lengths():
    for pkg in ("engine", "ternary_bench", "ternary_train"):
        root = ROOT.parent / pkg
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield node.end_lineno - node.lineno + 1, f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"


def test_no_function_of_80_lines_or_more():
    assert [f for n, f in _function_lengths() if n >= 80] == []


def test_model_code_stays_under_300_lines_per_module():
    assert len((ROOT / "runtime" / "model.py").read_text().splitlines()) < 300


def test_batch_and_server_use_no_private_part_of_another_object():
    """Batch and the server drive Model / Engine / Server through public names only
    (a private attribute is reached through self alone)."""
    found = []
    for rel in ("runtime/batch.py", "serve/server.py", "cli.py", "ppl.py"):
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append(f"{rel}:{node.lineno} .{node.attr}")
    assert found == []
