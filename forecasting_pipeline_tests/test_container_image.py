"""The code location's image (deploy/Dockerfile), read as Docker reads it: no Docker engine runs here.

It must build the CUDA and the CPU variant from one build argument, pin the same torch release as
``make install`` within pyproject.toml's range, install the project with its own pins, and hold no
weights and no secrets.
"""

import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / "deploy" / "Dockerfile.dockerignore"
# What the image needs from the repository, and all that the ignore file lets into the build context.
CONTEXT = {"pyproject.toml", "setup.cfg", "forecasting_pipeline", "migrations"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, backslash continuations joined."""
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current.strip())
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def args_of(dockerfile) -> dict[str, str]:
    return dict(arg.split("=", 1) for kind, arg in dockerfile if kind == "ARG" and "=" in arg)


def runs(dockerfile) -> list[str]:
    return [arg for kind, arg in dockerfile if kind == "RUN"]


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_when_the_image_pins_torch_then_it_is_make_installs_release_within_pyprojects_range(dockerfile):
    pinned = Version(args_of(dockerfile)["TORCH_VERSION"])
    makefile = re.search(r"^TORCH_VERSION \?= (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE).group(1)
    (torch,) = [Requirement(r) for r in project()["dependencies"] if Requirement(r).name == "torch"]

    assert pinned == Version(makefile)
    assert pinned in torch.specifier


def test_when_the_variant_is_chosen_then_cuda_takes_pypis_wheel_and_cpu_the_cpu_build(dockerfile):
    (install_torch,) = [run for run in runs(dockerfile) if "torch==" in run]
    branches = dict(re.findall(r"(\w+|\*)\) (.*?) ;;", install_torch))

    assert args_of(dockerfile)["VARIANT"] == "cuda"
    assert shlex.split(branches["cuda"]) == ["pip", "install", "torch==${TORCH_VERSION}"]
    assert shlex.split(branches["cpu"]) == [
        "pip", "install", "--index-url", "$TORCH_CPU_INDEX", "torch==${TORCH_VERSION}+cpu",
    ]
    assert args_of(dockerfile)["TORCH_CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert "exit 1" in branches["*"]


def test_when_the_project_is_installed_then_its_own_pins_apply_and_only_cuda_gets_the_gpu_extra(dockerfile):
    (install_project,) = [run for run in runs(dockerfile) if 'pip install "$target"' in run]
    requirements = [Requirement(r) for r in project()["dependencies"]]
    dagster_family = {r.name: str(r.specifier) for r in requirements if r.name.startswith("dagster")}
    (nvml,) = [Requirement(r) for r in project()["optional-dependencies"]["gpu"]]

    assert 'if [ "$VARIANT" = cuda ]; then target=".[gpu]"; else target="."; fi' in install_project
    assert "pip check" in install_project
    assert dagster_family == {
        "dagster": "==1.13.27", "dagster-webserver": "==1.13.27", "dagster-postgres": "==0.29.27", "dagster-k8s": "==0.29.27",
    }
    assert (nvml.name, str(nvml.specifier)) == ("nvidia-ml-py", "==13.615.71")


def test_when_files_are_copied_then_only_the_package_its_metadata_and_the_migrations_enter(dockerfile):
    copied = {source for kind, arg in dockerfile if kind == "COPY" for source in shlex.split(arg)[:-1]}
    ignore = [line for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")]

    assert copied == CONTEXT
    assert ignore[0] == "*"
    assert {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")} == CONTEXT


def test_when_the_image_is_built_then_it_holds_no_weights_no_secrets_and_runs_unprivileged(dockerfile):
    text = DOCKERFILE.read_text()
    declared = [arg.split("=", 1)[0] for kind, arg in dockerfile if kind == "ARG"]
    declared += [name for kind, arg in dockerfile if kind == "ENV" for name in re.findall(r"(\w+)=", arg)]
    (user,) = [arg for kind, arg in dockerfile if kind == "USER"]

    assert not [n for n in declared if re.search(r"PASSWORD|TOKEN|SECRET|DATABASE_URL|_KEY", n)]
    assert not re.search(r"from_pretrained|hf download|huggingface-cli|init-model|\.safetensors", text)
    assert user not in ("root", "0")


def test_when_the_image_installs_the_package_then_the_migrations_travel_inside_it(dockerfile):
    # pip installs the package from a wheel that carries migrations/ (test_packaging.py); the
    # image's build refuses to finish when the installed copy cannot find them.
    assert ("COPY", "migrations ./migrations") in dockerfile
    build_checks = " ".join(arg for kind, arg in dockerfile if kind == "RUN")
    assert "from forecasting_pipeline.storage.migrations import discover; assert discover()" in build_checks
