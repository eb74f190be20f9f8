"""The docs site: it builds with mkdocs --strict (a broken link fails), and the configuration reference is the code's."""

import shutil
import subprocess
import sys
from pathlib import Path

from forecasting_pipeline.settings_reference import reference_markdown

REPO = Path(__file__).resolve().parents[1]


def build_site(project: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(project / "mkdocs.yml"), "-d", str(site)],
        capture_output=True, text=True, timeout=120,
    )


def test_when_the_site_is_built_strictly_then_every_page_and_link_holds(tmp_path):
    done = build_site(REPO, tmp_path / "site")

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "configuration" / "index.html").exists()


def test_when_a_page_links_to_a_page_that_does_not_exist_then_the_strict_build_fails(tmp_path):
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text() + "\nSee [the runbook](no-such-page.md).\n")

    done = build_site(tmp_path, tmp_path / "site")

    assert done.returncode == 1
    assert "contains a link 'no-such-page.md', but the target is not found" in done.stderr


def test_when_the_settings_change_then_the_committed_configuration_reference_says_the_same():
    committed = (REPO / "docs" / "configuration.md").read_text()

    assert committed == reference_markdown(), "docs/configuration.md is not the settings' reference: run `make config-reference`"
