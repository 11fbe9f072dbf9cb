"""The package layout holds: every Hydra `_target_` imports, no lower layer imports a higher one, and the top level
keeps only entry points, shared basics and packages."""
import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "valharm"

# Lowest first; a module may import its own layer and the ones before it. `valharm.data` (the package itself: its
# file reader and shipped samples) is a basic; its loaders sit above values, whose names they use.
LAYERS = [
    ("basics", ("valharm", "valharm.errors", "valharm.caching", "valharm.study", "valharm.data")),
    ("models", ("valharm.models",)),
    ("generation", ("valharm.generation",)),
    ("values", ("valharm.values",)),
    ("data loaders", ("valharm.data.touche", "valharm.data.instructions")),
    ("prompting", ("valharm.prompting",)),
    ("scoring", ("valharm.scoring",)),
    ("benchmarks", ("valharm.benchmarks",)),
    ("aligners", ("valharm.aligners",)),
    ("runs", ("valharm.runs",)),
    ("analysis", ("valharm.analysis",)),
    ("entry points", tuple(f"valharm.{name}" for name in ("train", "evaluate", "validate", "analyze", "jobs",
                                                      "rescore"))),
]
TOP_LEVEL = {"__init__.py", "errors.py", "caching.py", "study.py", "prompting.py", "train.py", "evaluate.py",
             "validate.py", "analyze.py", "jobs.py", "rescore.py"}


def layer_of(module: str) -> int:
    """The layer of a dotted module name: the longest matching prefix wins (valharm.data.touche over valharm.data)."""
    best = max(((len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), default=None)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in tests/test_layout.py")
    return best[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, module: str) -> set[str]:
    """Every valharm module a module imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names
                               if (PACKAGE.parent / f"{base}.{alias.name}".replace(".", "/")).is_dir()
                               or (PACKAGE.parent / (f"{base}.{alias.name}".replace(".", "/") + ".py")).is_file()}
    return {name for name in found if name == "valharm" or name.startswith("valharm.")}


def upward_imports(root: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path)
        own = layer_of(module)
        for name in imported(ast.parse(path.read_text()), module):
            if layer_of(name) > own:
                bad.append(f"{module} ({LAYERS[own][0]}) imports {name} ({LAYERS[layer_of(name)][0]})")
    return bad


def test_no_lower_layer_imports_a_higher_one():
    assert upward_imports() == []


def test_the_layer_check_catches_an_upward_import(tmp_path):
    fake = tmp_path / "valharm" / "models"
    fake.mkdir(parents=True)
    (fake / "loading.py").write_text("def f():\n    from valharm.runs.pipeline import run_job\n")
    bad = []
    for path in fake.rglob("*.py"):
        module = ".".join(path.relative_to(tmp_path).with_suffix("").parts)
        bad += [name for name in imported(ast.parse(path.read_text()), module) if layer_of(name) > layer_of(module)]
    assert bad == ["valharm.runs.pipeline"]


def test_the_top_level_holds_entry_points_basics_and_packages():
    modules = {p.name for p in PACKAGE.glob("*.py")}
    assert modules <= TOP_LEVEL, f"modules to move into a package: {sorted(modules - TOP_LEVEL)}"
    for package in (p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__" and (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc, f"{package.name}/__init__.py needs a docstring saying what it holds and may import"


TARGETS = sorted({match for path in (ROOT / "conf").rglob("*.yaml")
                  for match in re.findall(r"_target_:\s*([\w.]+)", path.read_text())})


@pytest.mark.parametrize("target", TARGETS)
def test_every_hydra_target_imports(target):
    module, _, attribute = target.rpartition(".")
    assert hasattr(importlib.import_module(module), attribute), f"{target} (named in conf/) does not exist"
