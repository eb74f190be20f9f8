"""The package as pip installs it: every subpackage ships, and an installed copy finds its migrations."""

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_when_the_project_is_packaged_then_every_subpackage_is_listed():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "forecasting_pipeline").rglob("__init__.py")
    }

    assert on_disk <= listed
    assert listed - on_disk == {"forecasting_pipeline._migrations", "forecasting_pipeline._migrations.optional"}


def test_when_installed_from_a_wheel_then_the_package_finds_its_migrations_and_instruments(tmp_path):
    # Built from a copy of what a clean clone holds, so the build leaves nothing in the repository.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("forecasting_pipeline", "migrations"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    [wheel] = tmp_path.glob("forecasting_pipeline-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import forecasting_pipeline, pathlib;"
        "from forecasting_pipeline.storage.migrations import default_migrations_dir, discover;"
        "from forecasting_pipeline.market.instruments import load_instruments;"
        "print(pathlib.Path(forecasting_pipeline.__file__).parent);"
        "print(default_migrations_dir());"
        "print(len(discover()), len(discover(default_migrations_dir() / 'optional')), len(load_instruments()))"
    )

    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, check=True)

    package, migrations, counts = done.stdout.splitlines()
    assert Path(package).is_relative_to(site) and Path(migrations).is_relative_to(site)
    optional = len(list((REPO / "migrations" / "optional").glob("*.sql")))
    assert counts.split() == [str(len(list((REPO / "migrations").glob("*.sql")))), str(optional), "23"]
