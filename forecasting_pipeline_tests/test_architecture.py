"""The layers: domain code (market, forecasting, storage, scoring, ensemble, serving) never reaches into orchestration."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "forecasting_pipeline"
DOMAIN_LAYERS = ("market", "forecasting", "storage", "scoring", "ensemble", "serving")
# What only the orchestration layer and the entry points (settings, definitions, cli) may import.
ORCHESTRATION = (
    "dagster", "dagster_postgres", "dagster_webserver", "dagster_k8s",
    "forecasting_pipeline.orchestration", "forecasting_pipeline.settings",
    "forecasting_pipeline.definitions", "forecasting_pipeline.cli",
)


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("layer", DOMAIN_LAYERS)
def test_when_a_domain_module_imports_then_it_never_imports_dagster_or_the_orchestration_layer(layer):
    offenders = {
        f"{path.relative_to(PACKAGE)}: {module}"
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for module in imported_modules(path)
        if any(module == banned or module.startswith(banned + ".") for banned in ORCHESTRATION)
    }

    assert not offenders


def test_when_the_package_is_listed_then_every_module_sits_in_a_layer_or_is_an_entry_point():
    top_level = sorted(p.name for p in PACKAGE.glob("*.py"))

    assert top_level == [
        "__init__.py", "cli.py", "definitions.py", "heap.py", "settings.py", "settings_reference.py", "times.py",
    ]
