"""The house rules of the public API, read from the signatures (one spelling per concept, one mutation contract)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import c2lst

SRC = Path(c2lst.__file__).parent
MODULES = ("pp", "tl", "pl", "get")


#: kept for old code only, with a FutureWarning
DEPRECATED = {"tl.prediction_metrics"}


def _public():
    for mod in MODULES:
        module = getattr(c2lst, mod)
        for name in module.__all__:
            func = getattr(module, name)
            if inspect.isfunction(func) and f"{mod}.{name}" not in DEPRECATED:
                yield f"{mod}.{name}", func


PUBLIC = dict(_public())
#: functions that take two data objects, or data and a path, before their options
TWO_POSITIONAL = {
    "tl.evaluate_fidelity",
    "tl.evaluate_composition",
    "tl.evaluate_conditioning",
    "tl.export_adapter",
    "tl.export_hest",
    "tl.load_adapter",
    "pl.patches",
    "pl.spatial_expression",
}
#: one spelling per concept: the name on the left is not used; the right one is
RETIRED = {
    "table_added": "key_added",
    "synthetic_per_spot": "n_per_condition",
    "backbone": "feature_extractor",
    "steps": "n_steps",
}
MODE_ARGS = {"mode", "split", "gene_selection", "features", "scheduler", "mixed_precision", "preset"}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_data_first_then_keyword_only_options(name):
    params = list(inspect.signature(PUBLIC[name]).parameters.values())
    positional = [p.name for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    allowed = 2 if name in TWO_POSITIONAL or name.startswith("get.") else 1
    assert 1 <= len(positional) <= allowed, f"{name}: positional parameters {positional}"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_one_spelling_per_concept(name):
    params = inspect.signature(PUBLIC[name]).parameters
    retired = {p: RETIRED[p] for p in params if p in RETIRED}
    assert not retired, f"{name}: use {retired}"
    if name.startswith(("tl.", "pp.")):
        assert "key" not in params, f"{name}: name the key (`adapter_key`, `key_added`, ...), not `key`"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_modes_are_literal_types(name):
    params = inspect.signature(PUBLIC[name]).parameters
    loose = [p for p in params if p in MODE_ARGS and "Literal" not in str(params[p].annotation)]
    assert not loose, f"{name}: modes {loose} should be typed Literal[...]"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_copy_returns_the_copy_or_none(name):
    sig = inspect.signature(PUBLIC[name])
    if "copy" in sig.parameters:
        assert str(sig.return_annotation).replace(" ", "") == "AnnData|None", name


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            mod = "." * node.level + (node.module or "")
            for alias in node.names:
                yield f"{mod}:{alias.name}", node.lineno


def test_pl_imports_no_tl_privates():
    bad = [
        f"{path.name}:{line} {name}"
        for path in sorted((SRC / "pl").glob("*.py"))
        for name, line in _imports(path)
        if name.startswith("..tl.") or name.startswith("..tl:_")
    ]
    assert not bad, bad


def test_no_source_file_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_renamed_arguments_still_work_with_a_warning(adapted_base, tmp_path):
    with pytest.warns(FutureWarning, match=r"export_adapter\(key=\.\.\.\)` is deprecated; use `adapter_key=`"):
        path = c2lst.tl.export_adapter(adapted_base, tmp_path / "a.safetensors", key="c2lst_local")
    assert path.is_file()
    with pytest.raises(TypeError, match="`key` was renamed `adapter_key`; pass only `adapter_key=`"):
        c2lst.tl.export_adapter(adapted_base, tmp_path / "b.safetensors", key="x", adapter_key="c2lst_local")
    assert not (tmp_path / "b.safetensors").exists()


def _module_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """c2lst modules imported by ``name`` anywhere in it (module level, ``TYPE_CHECKING`` and functions)."""
    out = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names} & set(modules)
            out |= subs or {base}
    return (out & set(modules)) - {name}


def test_no_import_cycles():
    modules = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph = {m: _module_imports(m, p, modules) for m, p in modules.items()}
    cycles = []

    def visit(node, trail):
        for nxt in graph[node]:
            if nxt in trail:
                cycles.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in done:
                visit(nxt, [*trail, nxt])
        done.add(node)

    done: set[str] = set()
    for m in sorted(graph):
        if m not in done:
            visit(m, [m])
    assert not cycles, cycles[:5]
