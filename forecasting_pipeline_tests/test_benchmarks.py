"""Benchmarks that cannot rot: every script in ``benchmarks/`` runs in its ``--smoke`` form in the test suite.

A script is a file of ``benchmarks/`` that runs as a program (it has a ``__main__`` block); the
other files are helpers the scripts import. Scripts whose smoke run another test module makes
and checks (naming the script and ``--smoke``: the serving, ensemble, fine-tuning and bar-read
benchmarks) are left to it; every other script's smoke run is made here and must exit 0. A new
script without ``--smoke`` fails here, and so does one a refactor broke. The smoke runs are real:
the tiny checkpoint, the test server's PostgreSQL (each script makes and drops its own database),
real Dagster runs. They start together in a few worker threads, since most of their time is
process start-up and waiting on children. GPU-only scripts say "no CUDA" and exit 0 on a machine
without one.
"""

import ast
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TESTS = Path(__file__).resolve().parent
SMOKE_TIMEOUT_S = 600
# Two cores: more smoke runs at once only queue behind each other.
WORKERS = 3


def _is_script(path: Path) -> bool:
    """Whether the file has an ``if __name__ == "__main__":`` block."""
    tree = ast.parse(path.read_text())
    return any(
        isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
        for node in tree.body
    )


def scripts() -> list[str]:
    return sorted(p.name for p in BENCHMARKS.glob("*.py") if _is_script(p))


def smoked_elsewhere() -> list[str]:
    """Scripts whose smoke run another test module makes (it names the script and ``--smoke``)."""
    others = [p.read_text() for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name]
    named = {name: (f'"{name}"', f"benchmarks/{name}") for name in scripts()}
    return sorted(
        name for name, spellings in named.items()
        if any("--smoke" in text and any(s in text for s in spellings) for text in others)
    )


def smoked_here() -> list[str]:
    return [name for name in scripts() if name not in smoked_elsewhere()]


def helpers() -> list[str]:
    return sorted(p.name for p in BENCHMARKS.glob("*.py") if not _is_script(p))


@pytest.fixture(scope="module")
def smoke_runs(server_url, tmp_path_factory) -> dict[str, Future]:
    """Every script's ``--smoke`` run, started at once on a few threads: name -> its CompletedProcess."""
    env = {**os.environ, "DATABASE_URL": server_url, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore",
           "DAGSTER_HOME": str(tmp_path_factory.mktemp("dagster_home"))}

    def smoke(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(BENCHMARKS / name), "--smoke"], cwd=BENCHMARKS.parent, env=env,
                              capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S, check=False)

    # The heaviest first, so that the pool ends together.
    order = sorted(smoked_here(), key=lambda name: (BENCHMARKS / name).stat().st_size, reverse=True)
    with ThreadPoolExecutor(WORKERS) as pool:
        yield {name: pool.submit(smoke, name) for name in order}


@pytest.mark.parametrize("script", smoked_here())
def test_when_a_benchmark_runs_in_smoke_mode_then_it_exits_0(script, smoke_runs):
    done = smoke_runs[script].result(timeout=SMOKE_TIMEOUT_S)

    assert done.returncode == 0, f"{script} --smoke exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}"
    assert "--smoke" in (BENCHMARKS / script).read_text()


def test_when_the_benchmarks_folder_is_listed_then_every_script_has_a_smoke_mode_that_a_test_runs():
    without = [name for name in scripts() if "--smoke" not in (BENCHMARKS / name).read_text()]

    assert without == []
    assert set(smoked_here()) | set(smoked_elsewhere()) == set(scripts())
    assert {"serve.py", "ensemble_schemes.py"} <= set(smoked_elsewhere())


def test_when_the_benchmarks_folder_is_listed_then_every_helper_is_imported_by_a_script_or_run_by_one():
    sources = {name: (BENCHMARKS / name).read_text() for name in scripts()}

    unused = [h for h in helpers() if not any(Path(h).stem in text for text in sources.values())]

    assert unused == []
    assert {"run.py", "scoring_scale.py", "bare_process.py", "naive.py"} <= set(scripts())
