"""The import graph follows the pipeline: no module imports a later stage.

Stages, earliest first: the core (ir, the op table, errors, scalar, scan plan, param
counts, ... at the top of archc/ and in archc/ops/), frontend/, passes/, analysis/,
codegen/. The drivers (api, cli, fold, the package itself) and the runtime (what
generated code imports, which imports nothing of the compiler) stand outside. Imports
inside functions count too: a lazy import is still a dependency.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "archc"
RANK = {"core": 0, "frontend": 1, "passes": 2, "analysis": 3, "codegen": 4}
DRIVERS = {"archc", "archc.api", "archc.cli", "archc.fold", "archc.__main__"}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> str | None:
    if module in DRIVERS or module.startswith("archc.runtime"):
        return None
    part = module.split(".")[1] if "." in module else ""
    return part if part in RANK else "core"


def _imports(path: Path):
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        yield from (n for n in names if n.startswith("archc"))


def test_no_stage_imports_a_later_one():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module(path)
        stage = _stage(module)
        for target in _imports(path):
            if target.startswith("archc.runtime") and module.startswith("archc.runtime"):
                continue
            if stage is None:
                continue
            if target in DRIVERS or target.startswith("archc.runtime") or target == "archc.__version__":
                if target != "archc.__version__":
                    wrong.append(f"{module} -> {target} (a driver or the runtime)")
                continue
            other = _stage(target)
            if RANK[other] > RANK[stage]:
                wrong.append(f"{module} ({stage}) -> {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_the_runtime_imports_nothing_of_the_compiler():
    for path in sorted((ROOT / "runtime").rglob("*.py")):
        for target in _imports(path):
            assert target.startswith(("archc.runtime", "archc.errors")), (path, target)
