"""The package's layering, read from its imports (every `import` in every module, at the top or in a function):

    world (data source and judge)  <  sources, labelers
    config, data, tokenizer, modeling, losses, training  <  batching  <  fast_sampler  <  rollout  <  report, evaluate
    <  stages (pretrain, sft, label, reward, ppo, dpo; lm is the loop pretrain and sft share)  <  pipeline  <  cli

The label server (labelserver/) sits beside them: its storage and export (db, settings, export, labels) below
evaluate, which reads people's verdicts (`eval --human`); the pages (app) on those alone, without torch; `tasks`
(which samples models) above rollout and evaluate.

No import cycle, no stage importing another stage, nothing below the stages importing one, and the trainers
reaching the embedded world only through `sources`.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "rlhfkit"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(rlhfkit module imported, whether the import is inside a function) for every import of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for inner in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from rlhfkit.stages import ppo` imports the module rlhfkit.stages.ppo
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                for alias in node.names
            ]
        else:
            continue
        found += [(name, id(node) in in_function) for name in names if name.split(".")[0] == "rlhfkit"]
    return found


def node(module: str) -> str:
    """The world is one unit: its files import each other through its package."""
    return "rlhfkit.world" if module.startswith("rlhfkit.world") else module


GRAPH: dict[str, set[str]] = {}
for _name, _path in MODULES.items():
    GRAPH.setdefault(node(_name), set()).update(
        node(m) for m, _ in imports_of(_path) if node(m) != node(_name)
    )

STAGES = {m for m in MODULES if m.startswith("rlhfkit.stages.")}
SHARED_LOOP = "rlhfkit.stages.lm"
ABOVE_THE_STAGES = {"rlhfkit.pipeline", "rlhfkit.cli"}


def test_the_walk_sees_the_package():
    assert {"rlhfkit.batching", "rlhfkit.rollout", "rlhfkit.fast_sampler", "rlhfkit.stages.ppo"} <= set(
        MODULES
    )
    assert "rlhfkit.batching" in GRAPH["rlhfkit.stages.ppo"]
    assert "rlhfkit.stages.ppo" in GRAPH["rlhfkit.pipeline"]


def test_no_import_cycle():
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(module) :] + [module]))
        if module in done:
            return
        for imported in sorted(GRAPH.get(module, ())):
            visit(imported, path + [module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])


@pytest.mark.parametrize("stage", sorted(STAGES - {SHARED_LOOP}))
def test_no_stage_imports_another_stage(stage):
    allowed = {SHARED_LOOP} if stage in {"rlhfkit.stages.pretrain", "rlhfkit.stages.sft"} else set()
    assert not (GRAPH[stage] & STAGES) - allowed


def test_the_shared_loop_imports_no_stage():
    assert not GRAPH[SHARED_LOOP] & STAGES


def test_nothing_below_the_stages_imports_one():
    below = set(GRAPH) - STAGES - ABOVE_THE_STAGES
    offenders = {m: sorted(GRAPH[m] & STAGES) for m in below if GRAPH[m] & STAGES}
    assert not offenders


def test_the_world_imports_only_the_file_formats():
    assert GRAPH["rlhfkit.world"] <= {"rlhfkit.data"}


def test_the_trainers_reach_the_world_only_through_sources():
    trainers = ["rlhfkit.stages.pretrain", "rlhfkit.stages.sft", "rlhfkit.stages.ppo", "rlhfkit.stages.dpo"]
    assert not [t for t in trainers if "rlhfkit.world" in GRAPH[t]]
    assert "rlhfkit.sources" in GRAPH["rlhfkit.stages.ppo"]


COMMAND_LINES = {"rlhfkit.cli", "rlhfkit.labelserver.cli"}


def test_imports_are_at_the_top():
    """The command lines alone import a command's modules in the function that runs it, so that `rlhfkit --help`
    stays fast and `rlhfkit label-server` serves its pages without loading torch."""
    inside = {
        name: sorted(m for m, in_function in imports_of(path) if in_function)
        for name, path in MODULES.items()
        if name not in COMMAND_LINES
    }
    assert not {name: found for name, found in inside.items() if found}


def test_the_label_server_serves_without_torch():
    pages = "import sys, rlhfkit.labelserver.app, rlhfkit.labelserver.cli; print('torch' in sys.modules)"
    ran = subprocess.run([sys.executable, "-c", pages], capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == "False"
