"""The structure the code promises (docs/architecture.md): dependencies run one way, from pipeline/ to
components/, and every name written into the tracking store is spelled in exactly one module."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = sorted((ROOT / "components").rglob("*.py"))
PIPELINE = sorted((ROOT / "pipeline").rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_components_never_import_the_orchestration_layer_or_its_libraries():
    offenders = {path.relative_to(ROOT).as_posix(): sorted(module for module in imported_modules(path)
                                                            if module.split(".")[0] in ("pipeline", "kfp", "mlflow"))
                 for path in COMPONENTS}
    assert {path: modules for path, modules in offenders.items() if modules} == {}


def string_literals(path: Path) -> list[str]:
    literals = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            literals.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            literals += [part.value for part in node.values if isinstance(part, ast.Constant)]
    return literals


TAG = re.compile(r"^(tunepipe\.[a-z_.]+|mlflow\.parentRunId)$")
# Logger names ("tunepipe.tune") are not tags.
LOGGERS = {f"tunepipe.{name}" for name in ("ingest", "preprocess", "tune", "train", "evaluate", "push", "model",
                                           "registry", "resolve-baseline")}


def test_every_tag_name_is_spelled_in_one_module_only():
    spelled: dict[str, set[str]] = {}
    for path in COMPONENTS + PIPELINE:
        for literal in string_literals(path):
            if TAG.match(literal) and literal not in LOGGERS:
                spelled.setdefault(literal, set()).add(path.relative_to(ROOT).as_posix())
    assert spelled, "no tag names found: the scan is broken"
    assert {tag: sorted(paths) for tag, paths in spelled.items() if paths != {"pipeline/tags.py"}} == {}


def test_no_source_file_is_too_long_to_read():
    lengths = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines()) for path in COMPONENTS + PIPELINE}
    assert {path: lines for path, lines in lengths.items() if lines > 500} == {}
