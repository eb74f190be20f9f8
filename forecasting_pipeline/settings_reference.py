"""The configuration reference (docs/configuration.md), written from the settings' declarations.

``forecasting-pipeline config-reference`` prints it; a test keeps the committed page equal to it.
"""

from __future__ import annotations

from typing import Any

from forecasting_pipeline.settings import GROUPS, OTHER_VARIABLES, Secret, Settings, kind_of

INTRODUCTION = """\
# Configuration

<!-- Written by `forecasting-pipeline config-reference` from forecasting_pipeline/settings.py.
     Edit the declarations there, then run `make config-reference`. -->

Everything is set in the environment. A variable that is unset or empty takes its default.

Every process checks every value when it starts: the Dagster definitions as they load, each
`forecasting-pipeline` command, and the forecast service. A bad value stops it there, with one line
per problem that names the variable and says what its value must be, for example:

```text
forecasting-pipeline: ENSEMBLE_SCHEME must be one of grid, inverse, sqrt-inverse, got 'median'
```

**Secrets** (type "a secret") are never copied into the settings, the logs or the Dagster UI.
Dagster resolves them when a run starts (`dg.EnvVar`), and the command line reads them only where
it uses them. On Kubernetes they come from Secrets ([Kubernetes](kubernetes.md)).
"""

OTHERS = """\
## Variables other tools read

The project sets these, or relies on them, but does not read them itself.

| variable | read by | meaning |
|---|---|---|
"""


def default_text(field: Any) -> str:
    """A variable's default as the reference prints it."""
    extra = field.json_schema_extra or {}
    if "shown" in extra:
        return extra["shown"]
    value = field.default
    if value is None or field.annotation is Secret:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return f"`{value}`" if isinstance(value, str) else str(value)


def reference_markdown() -> str:
    """The whole page: an introduction, one table per section of the settings, and the other tools' variables."""
    parts = [INTRODUCTION]
    for group in GROUPS:
        fields = [f for f in Settings.model_fields.values() if f.json_schema_extra["group"] == group]
        rows = [f"| `{f.alias}` | {kind_of(f)} | {default_text(f)} | {f.description} |" for f in fields]
        parts.append(f"## {group}\n\n| variable | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    parts.append(OTHERS + "\n".join(f"| `{v.name}` | {v.read_by} | {v.meaning} |" for v in OTHER_VARIABLES) + "\n")
    return "\n".join(parts)
