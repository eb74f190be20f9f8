#!/bin/sh
# benchmarks/run.py on a GPU machine whose python3 already has CUDA torch and transformers but
# which has no network and takes a 64 MiB carry (the device machines this project is lent). What
# its image lacks (Dagster, dagster-postgres, pgserver, polars, psycopg, exchange_calendars,
# chronos-forecasting...) travels as one xz archive of an installed site folder: polars' runtime
# alone is a 54 MB wheel, and the wheels together are over the limit.
#
#   sh benchmarks/gpu_machine.sh pack                  # here: writes .gpu_carry/site.tar.xz
#   sh benchmarks/gpu_machine.sh run [run.py args]     # there, from the repo root, .gpu_carry carried
#   sh benchmarks/gpu_machine.sh serve [serve.py args] # there: the forecast service's benchmark on CUDA
#
# PY_VERSION (default 3.12) must match the GPU machine's python3.
set -eu
CARRY=.gpu_carry
PY_VERSION=${PY_VERSION:-3.12}

case "${1:-}" in
pack)
    rm -rf "$CARRY/wheels" "$CARRY/site"
    mkdir -p "$CARRY"
    platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
        $platforms --platform any -d "$CARRY/wheels" -r benchmarks/gpu_machine_requirements.txt
    # shellcheck disable=SC2086
    python3 -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: --python-version "$PY_VERSION" \
        --implementation cp $platforms --target "$CARRY/site" "$CARRY"/wheels/*.whl
    tar -C "$CARRY" -cf - site | xz -9 -T0 > "$CARRY/site.tar.xz"
    rm -rf "$CARRY/wheels" "$CARRY/site"
    ls -l "$CARRY/site.tar.xz"
    ;;
run|serve)
    what=$1
    shift
    site=/tmp/gpu_machine_site
    rm -rf "$site" && mkdir -p "$site"
    xz -dc "$CARRY/site.tar.xz" | tar -C "$site" --strip-components=1 -xf -
    python=$(command -v python3)
    # The wheels' console scripts name this machine's interpreter; write the two the benchmark runs.
    rm -rf "$site/bin" && mkdir "$site/bin"
    for entry in "dagster dagster._cli" "forecasting-pipeline forecasting_pipeline.cli"; do
        name=${entry% *}; module=${entry#* }
        printf '#!%s\nimport sys\nfrom %s import main\nsys.exit(main())\n' "$python" "$module" > "$site/bin/$name"
        chmod +x "$site/bin/$name"
    done
    export PATH="$site/bin:$PATH" PYTHONPATH="$site:$PWD" TQDM_DISABLE=1 PYTHONUNBUFFERED=1
    export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/gpu_machine_xdg"
    mkdir -p -m 700 "$XDG_RUNTIME_DIR"
    "$python" -c 'import torch, dagster, chronos, polars, psycopg, pgserver, exchange_calendars; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "dagster", dagster.__version__)'
    if [ "$what" = serve ]; then exec "$python" benchmarks/serve.py --device cuda "$@"; fi
    exec "$python" benchmarks/run.py --device cuda "$@"
    ;;
*)
    echo "usage: $0 pack | run [run.py arguments] | serve [serve.py arguments]" >&2
    exit 2
    ;;
esac
