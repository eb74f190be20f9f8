"""The ``forecasting-pipeline`` command: set-up steps, the main job, and offline checkpoints.

    forecasting-pipeline with-db -- CMD...   run CMD with DATABASE_URL set (embedded PostgreSQL when unset)
    forecasting-pipeline migrate             apply pending migrations to DATABASE_URL
    forecasting-pipeline setup-instance      give the Dagster instance's `gpu` pool a limit of 1 unless it has one
    forecasting-pipeline run                 materialise the latest window of a cadence and print a summary
    forecasting-pipeline init-model          write a RANDOM-WEIGHT Chronos-2 checkpoint (tests, benchmarks, offline demos)
    forecasting-pipeline backfill            submit an asset backfill of a cadence's chain (the daemon of `make dev` runs it),
                                             and with --with-ensemble the ensemble; wait for its runs and print what they did
    forecasting-pipeline backfill-summary ID what a backfill's runs did (any backfill of a chain, UI ones too)
    forecasting-pipeline latest SYMBOL       print the latest forecast of a model (default kronos-base), as the gateway reads it
    forecasting-pipeline models list|promote|rollback
                                             the fine-tuned checkpoints' registry: promote a challenger that passes the
                                             promotion test, roll a promotion back
    forecasting-pipeline serve               the forecast service: on-demand forecasts over HTTP, and the forecasts
                                             of every run that sets CHRONOS2_SERVER, in one process that keeps Chronos-2 loaded
    forecasting-pipeline status              is it working: database, migrations, model, each cadence's newest window
                                             against its schedule, the forecast service (exit 1 when something is wrong)
    forecasting-pipeline config-reference    print the configuration reference (docs/configuration.md)
    forecasting-pipeline frames prune        delete frames older than FRAMES_RETENTION_DAYS under FRAMES_DIR
                                             (a run's own frames go once its rows are committed)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import warnings
from datetime import timezone
from pathlib import Path
from typing import TYPE_CHECKING

from forecasting_pipeline.market.cadences import CADENCES, DAILY

if TYPE_CHECKING:
    from forecasting_pipeline.settings import Settings

logger = logging.getLogger("forecasting_pipeline")

DEMO_CHECKPOINT = Path(".models") / "chronos2-random-tiny"


def _database_url() -> str:
    from forecasting_pipeline.settings import database_url

    url = database_url()
    if not url:
        sys.exit("DATABASE_URL is not set; run through `forecasting-pipeline with-db -- ...` or `make run`.")
    return url


def cmd_with_db(args: argparse.Namespace) -> int:
    from forecasting_pipeline.storage.embedded_postgres import database_environment

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        sys.exit("with-db needs a command after --")
    from forecasting_pipeline.settings import Settings, dagster_database_url, database_url

    pgdata = args.pgdata or Settings.from_env().pgdata
    with database_environment(database_url(), dagster_database_url(), pgdata) as env:
        child_env = {**os.environ, **env}
        if args.demo_model_if_unset:
            settings = Settings.from_env(child_env)
            demo = _demo_model_if_unset(settings)
            if demo is not settings:
                child_env["CHRONOS2_MODEL"] = demo.chronos2_model
        child = subprocess.Popen(command, env=child_env)
        # Ctrl-C reaches the child through the terminal; the server must outlive the child's own
        # shutdown, so this process waits instead of unwinding (and stopping PostgreSQL) first.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        previous_term = signal.signal(signal.SIGTERM, lambda *_: child.terminate())
        try:
            return child.wait()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)


def cmd_migrate(args: argparse.Namespace) -> int:
    from forecasting_pipeline.storage.database import connect
    from forecasting_pipeline.storage.migrations import migrate

    conn = connect(_database_url())
    try:
        applied = migrate(conn, Path(args.dir) if args.dir else None)
    finally:
        conn.close()
    print(f"migrations: {len(applied)} applied" + (f" ({', '.join(applied)})" if applied else ", already up to date"))
    return 0


def _instance():
    """The DAGSTER_HOME instance; exits naming the variable when there is none."""
    import dagster as dg

    from forecasting_pipeline.settings import Settings

    if not Settings.from_env().dagster_home:
        sys.exit("forecasting-pipeline: DAGSTER_HOME is not set: set it to the folder holding the instance's dagster.yaml")
    return dg.DagsterInstance.get()


def cmd_setup_instance(args: argparse.Namespace) -> int:
    from forecasting_pipeline.orchestration.pools import ensure_gpu_pool_limit
    from forecasting_pipeline.settings import Settings

    with _instance() as instance:
        limit, source = ensure_gpu_pool_limit(instance)
    print(f"Dagster instance at {Settings.from_env().dagster_home}: pool 'gpu' limited to {limit} ({source})")
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    from forecasting_pipeline.definitions import defs
    from forecasting_pipeline.orchestration.backfills import partition_range, runs_for, submit_chain_backfill

    from forecasting_pipeline.settings import Settings

    settings = Settings.from_env()
    windows = settings.cadence_windows(args.cadence)
    try:
        n_windows = len(partition_range(windows, args.start, args.end))
    except ValueError as exc:
        # A mistyped or reversed range: say so and submit nothing.
        print(f"forecasting-pipeline backfill: {exc}", file=sys.stderr)
        return 2
    instance = _instance()
    backfill_id = submit_chain_backfill(
        instance, defs.resolve_asset_graph(), windows, args.start, args.end, with_ensemble=args.with_ensemble
    )
    print(
        f"backfill {backfill_id}: {n_windows} {args.cadence} windows {args.start}...{args.end}"
        + (" (chain, then the ensemble)" if args.with_ensemble else "") + " as "
        f"{runs_for(windows, n_windows)} run(s); the Dagster daemon (`make dev`) launches them. "
        f"Progress: {settings.dagster_ui_url.rstrip('/')}/runs/b/{backfill_id}", flush=True,
    )
    if args.no_wait:
        return 0
    return print_backfill_summary(instance, backfill_id, args.wait_timeout_s)


def cmd_backfill_summary(args: argparse.Namespace) -> int:
    return print_backfill_summary(_instance(), args.backfill_id, timeout_s=None, wait=not args.no_wait)


def print_backfill_summary(instance, backfill_id: str, timeout_s: float | None, wait: bool = True) -> int:
    """Wait for the backfill's runs, print what they did and record it on ml_predictions_<cadence>.

    Exit status: 0 when every window was written, 1 when some were not (each is listed with the
    command that re-runs it), 2 for an unknown backfill, 3 when the wait timed out.
    """
    import dagster as dg

    from forecasting_pipeline.orchestration.backfill_summary import backfill_runs, summarise_runs
    from forecasting_pipeline.orchestration.backfills import backfill_windows, wait_for_backfill

    try:
        cadence, requested = backfill_windows(instance, backfill_id)
    except ValueError as exc:
        print(f"forecasting-pipeline: {exc}", file=sys.stderr)
        return 2
    if wait and not wait_for_backfill(instance, backfill_id, timeout_s, lambda line: print(line, flush=True)):
        print(f"backfill {backfill_id} has not finished; see it later with "
              f"`forecasting-pipeline backfill-summary {backfill_id}`")
        return 3
    summary = summarise_runs(instance, backfill_runs(instance, backfill_id), cadence, requested)
    print(summary.text())
    if not wait:
        return 0
    instance.report_runless_asset_event(dg.AssetObservation(
        asset_key=f"ml_predictions_{cadence}", metadata={"backfill": backfill_id, **summary.metadata()},
    ))
    return 1 if summary.not_written else 0


def cmd_init_model(args: argparse.Namespace) -> int:
    from forecasting_pipeline.forecasting.model import (
        RANDOM_WEIGHTS_NOTE,
        write_random_checkpoint,
    )

    path = write_random_checkpoint(args.dir, args.size)
    print(f"wrote {args.size} Chronos-2 checkpoint to {path}\n{RANDOM_WEIGHTS_NOTE}")
    return 0


def _demo_model_if_unset(settings: Settings) -> Settings:
    """On fully embedded defaults only, a random tiny checkpoint instead of the hub's model, said loudly."""
    if settings.model_configured or not settings.embedded_database:
        return settings
    from forecasting_pipeline.forecasting.model import RANDOM_WEIGHTS_NOTE, write_random_checkpoint

    if not (DEMO_CHECKPOINT / "config.json").exists():
        write_random_checkpoint(DEMO_CHECKPOINT, "tiny")
    print(
        "!! CHRONOS2_MODEL is unset and the database is the embedded demo one: using a random tiny checkpoint\n"
        f"!! at {DEMO_CHECKPOINT}. {RANDOM_WEIGHTS_NOTE}\n"
        "!! Set CHRONOS2_MODEL=amazon/chronos-2 (with hub access) or a local checkpoint directory for real forecasts."
    )
    return settings.with_model(str(DEMO_CHECKPOINT.resolve()))


def cmd_run(args: argparse.Namespace) -> int:
    import dagster as dg

    from forecasting_pipeline.orchestration.assembly import build_definitions
    from forecasting_pipeline.orchestration.schedules import chain_group
    from forecasting_pipeline.settings import Settings
    from forecasting_pipeline.storage.database import connect
    from forecasting_pipeline.storage.migrations import migrate
    from forecasting_pipeline.storage.ml_predictions import MODEL_NAME

    url = _database_url()
    conn = connect(url)
    try:
        migrate(conn)
        # The database's clock, which stamps created_at: this machine's may be set apart from it.
        started = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    finally:
        conn.close()
    from forecasting_pipeline.orchestration.pools import ensure_gpu_pool_limit

    with _instance() as instance:
        ensure_gpu_pool_limit(instance)
    settings = Settings.from_env()
    if args.demo_model_if_unset:
        settings = _demo_model_if_unset(settings)
    windows = settings.cadence_windows(args.cadence)
    partition = args.partition or windows.partitions_def.get_last_partition_key()
    result = build_definitions(settings).resolve_job_def(f"{chain_group(windows)}_job").execute_in_process(
        instance=_instance(), partition_key=partition, raise_on_error=False,
        # The full DEBUG event stream stays in the instance (the UI shows it); the terminal gets INFO.
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
    )
    if not result.success:
        print(f"run {result.run_id} for window {partition} failed; see the Dagster UI (`make dev`) for its logs")
        return 1
    conn = connect(url)
    try:
        # The window's set (its claims), as this run wrote it.
        rows = conn.execute(
            """
            SELECT p.symbol, p.as_of, jsonb_array_length(p.predictions),
                   (p.predictions->0->>'p10')::float8, (p.predictions->0->>'p50')::float8,
                   (p.predictions->0->>'p90')::float8, p.model_version
            FROM ml_prediction_windows w
            JOIN ml_predictions p ON p.model_name = w.model_name AND p.timeframe = w.timeframe
                                 AND p.symbol = w.symbol AND p.as_of = w.as_of
            WHERE w.model_name = %s AND w.timeframe = %s AND w.window_key = %s AND p.created_at >= %s
            ORDER BY p.symbol
            """,
            (MODEL_NAME, args.cadence, partition, started),
        ).fetchall()
    finally:
        conn.close()
    print(f"\nwindow {partition} ({args.cadence}): {len(rows)} {MODEL_NAME} rows written to ml_predictions")
    print(f"{'symbol':<9} {'as_of (UTC)':<17} {'steps':>5} {'p10[1]':>12} {'p50[1]':>12} {'p90[1]':>12}")
    for symbol, as_of, steps, p10, p50, p90, _version in rows:
        print(f"{symbol:<9} {as_of.astimezone(timezone.utc):%Y-%m-%d %H:%M} {steps:>5} {p10:>12.5g} {p50:>12.5g} {p90:>12.5g}")
    if rows:
        print(f"model_version: {rows[0][6]}")
    return 0


def cmd_latest(args: argparse.Namespace) -> int:
    from forecasting_pipeline.serving.gateway import (
        ReadPathMissingError,
        UnknownSeriesError,
        format_forecast,
        latest_forecast,
    )
    from forecasting_pipeline.storage.database import connect

    conn = connect(_database_url())
    try:
        forecast = latest_forecast(conn, args.symbol, args.timeframe, args.model)
    except (UnknownSeriesError, ReadPathMissingError) as exc:
        print(f"forecasting-pipeline latest: {exc}", file=sys.stderr)
        return 2
    finally:
        conn.close()
    print(format_forecast(forecast))
    return 0


def _print_registry(conn, cadence: str, min_forecasts: int, n_events: int) -> None:
    from forecasting_pipeline.market.cadences import cadence_named
    from forecasting_pipeline.scoring.promotion import evaluate_challenger
    from forecasting_pipeline.storage import model_registry as registry

    found = registry.checkpoints(conn, cadence)
    champion = next((c for c in found if c.status == registry.CHAMPION), None)
    print(f"{cadence}: champion " + (f"{champion.label} {champion.model_version}" if champion
                                     else "the configured model (CHRONOS2_MODEL)"))
    print(f"  {'id':>4}  {'status':<10}  {'sha256':<12}  {'cutoff':<10}  {'mode':<4}  {'steps':>6}  {'lr':>8}  "
          f"{'seed':>4}  {'val loss':>9}  registered")
    for c in reversed(found):
        loss = "-" if c.validation_loss is None else f"{c.validation_loss:.4f}"
        print(f"  {c.id:>4}  {c.status:<10}  {c.content_hash[:12]:<12}  {c.training_to:%Y-%m-%d}  {c.finetune_mode:<4}  "
              f"{c.steps:>6}  {c.learning_rate:>8.2g}  {c.seed:>4}  {loss:>9}  {c.created_at:%Y-%m-%d %H:%M}")
    challenger = next((c for c in found if c.status == registry.CHALLENGER), None)
    if challenger is not None:
        test = evaluate_challenger(conn, cadence, cadence_named(cadence).bar, challenger.model_version,
                                   challenger.training_to, min_forecasts)
        print(f"  promotion test of challenger #{challenger.id}:")
        for line in test.lines():
            print(f"    {line}")
    for event in registry.events(conn, cadence, limit=n_events):
        print(f"  event {event.id} {event.created_at:%Y-%m-%d %H:%M} {event.action:<8} checkpoint "
              f"#{event.checkpoint_id} champion {event.champion_before or 'configured'} -> "
              f"{event.champion_after or 'configured'}{' (FORCED)' if event.forced else ''} by {event.actor}: {event.reason}")


def cmd_models(args: argparse.Namespace) -> int:
    """``models list|promote|rollback``: the fine-tuned checkpoints' registry (docs/fine-tuning.md)."""
    import getpass

    from forecasting_pipeline.market.cadences import cadence_named
    from forecasting_pipeline.scoring.promotion import evaluate_challenger
    from forecasting_pipeline.settings import Settings
    from forecasting_pipeline.storage import model_registry as registry
    from forecasting_pipeline.storage.database import connect

    settings = Settings.from_env()
    actor = f"cli {getpass.getuser()}"
    conn = connect(_database_url())
    # Each registry change commits on its own; reads before it must not hold it in an open transaction.
    conn.autocommit = True
    try:
        if args.action == "list":
            for cadence in [args.cadence] if args.cadence else ["1h", "1d"]:
                _print_registry(conn, cadence, settings.promotion_min_forecasts, args.events)
            return 0
        if args.action == "rollback":
            event = registry.rollback(conn, args.cadence, args.reason or "rolled back", actor)
            print(f"{args.cadence}: rolled back checkpoint #{event.checkpoint_id}; the champion is now "
                  + (f"#{event.champion_after}" if event.champion_after else "the configured model (CHRONOS2_MODEL)"))
            print(_takes_effect(args.cadence, settings.serve_cadence))
            return 0
        target = (registry.checkpoint(conn, args.checkpoint) if args.checkpoint is not None
                  else registry.challenger(conn, args.cadence))
        if target is None or target.timeframe != args.cadence:
            print(f"forecasting-pipeline models promote: no {args.cadence} "
                  + (f"checkpoint #{args.checkpoint}" if args.checkpoint is not None else "challenger")
                  + " in the registry", file=sys.stderr)
            return 2
        test = evaluate_challenger(conn, args.cadence, cadence_named(args.cadence).bar, target.model_version,
                                   target.training_to, settings.promotion_min_forecasts)
        print(f"promotion test of {args.cadence} checkpoint {target.label}:")
        for line in test.lines():
            print(f"  {line}")
        if not test.passed and not args.force:
            print("refused: the challenger has not shown it is better out of sample (see above); --force --reason "
                  "TEXT promotes anyway, recorded as forced", file=sys.stderr)
            return 1
        if args.force and not args.reason:
            print("forecasting-pipeline models promote: --force needs --reason", file=sys.stderr)
            return 2
        event = registry.promote(conn, args.cadence, target.id, args.reason or "promotion test passed",
                                 test.evidence(), forced=not test.passed, actor=actor)
        print(f"{args.cadence}: checkpoint #{event.champion_after} is the champion"
              + (" (FORCED: the test did not pass)" if event.forced else "") + f"; {target.model_version}")
        print(_takes_effect(args.cadence, settings.serve_cadence))
        return 0
    except registry.RegistryError as exc:
        print(f"forecasting-pipeline models {args.action}: {exc}", file=sys.stderr)
        return 2
    finally:
        conn.close()


def _takes_effect(cadence: str, serve_cadence: str) -> str:
    service = ("restart `forecasting-pipeline serve` to serve it on demand" if cadence == serve_cadence
               else f"the service serves the {serve_cadence} champion (SERVE_CADENCE)")
    return (f"From the next {cadence} run on, the chain (and so the ensemble) uses it; {service}.")


DEFAULT_SOCKET = ".chronos2.sock"


def cmd_serve(args: argparse.Namespace) -> int:
    from forecasting_pipeline.heap import freeze_import_time_objects
    from forecasting_pipeline.market.instruments import load_instruments
    from forecasting_pipeline.serving.api.server import serve
    from forecasting_pipeline.settings import Settings, bar_source, chronos2_runner, database_url, service_config

    settings = _demo_model_if_unset(Settings.from_env())
    socket_path = None if args.no_socket else str(Path(args.socket or settings.model_server_socket or DEFAULT_SOCKET).resolve())
    config = service_config(settings, host=args.host, port=args.port)
    source, universe = bar_source(settings), load_instruments(settings.instruments_file)
    freeze_import_time_objects()
    if socket_path:
        print(f"Dagster runs forecast through this process when CHRONOS2_SERVER={socket_path}", flush=True)
    # The same settings, read from the same environment, as the runs' chronos2 resource.
    return serve(config, chronos2_runner(settings), source, universe, socket_path, database_url())


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from forecasting_pipeline.orchestration.status import gather_status
    from forecasting_pipeline.settings import Settings

    with _instance() as instance:
        status = gather_status(Settings.from_env(), instance, load_model=args.model)
    print(json.dumps(status.as_json(), indent=2) if args.json else status.text())
    return 0 if status.ok else 1


def cmd_frames_prune(args: argparse.Namespace) -> int:
    from forecasting_pipeline.orchestration.io_manager import PartitionedFramesIOManager
    from forecasting_pipeline.settings import Settings

    settings = Settings.from_env()
    days = settings.frames_retention_days if args.days is None else args.days
    deleted = PartitionedFramesIOManager(base_dir=settings.frames_dir, retention_days=days).sweep()
    print(f"deleted {deleted} frame files older than {days} days under {settings.frames_dir}")
    return 0


def _version() -> str:
    from importlib.metadata import version

    return (f"forecasting-pipeline {version('forecasting_pipeline')} (dagster {version('dagster')}, "
            f"chronos-forecasting {version('chronos-forecasting')}, Python {sys.version.split()[0]})")


def cmd_config_reference(args: argparse.Namespace) -> int:
    from forecasting_pipeline.settings_reference import reference_markdown

    sys.stdout.write(reference_markdown())
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forecasting-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="cmd", required=True)
    cadences = list(CADENCES)
    _add_setup_commands(sub)
    _add_run_commands(sub, cadences)
    _add_model_commands(sub, cadences)
    _add_service_commands(sub)
    return parser


def _add_setup_commands(sub) -> None:
    p = sub.add_parser("with-db", help="run a command with DATABASE_URL/DAGSTER_PG_URL set")
    p.add_argument("--pgdata", default=None,
                   help="embedded server data folder, used only when DATABASE_URL is unset (FORECASTING_PGDATA, else .pgdata)")
    p.add_argument("--demo-model-if-unset", action="store_true",
                   help="on fully embedded defaults (embedded database, CHRONOS2_MODEL unset), give the command a "
                        "random-weight tiny checkpoint, loudly, as `make run` does")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_with_db)

    p = sub.add_parser("migrate", help="apply pending SQL migrations to DATABASE_URL")
    p.add_argument("--dir", help="migrations folder (default: the repository's migrations/)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("setup-instance", help="limit the Dagster instance's gpu pool to 1, unless the instance sets a limit")
    p.set_defaults(func=cmd_setup_instance)

    p = sub.add_parser("config-reference", help="print the configuration reference (docs/configuration.md) from the settings")
    p.set_defaults(func=cmd_config_reference)


def _add_run_commands(sub, cadences: list[str]) -> None:
    p = sub.add_parser("run", help="migrate, then materialise one window of a cadence and print a summary")
    p.add_argument("--cadence", choices=cadences, default=DAILY.name)
    p.add_argument("--partition", help="window to run (default: the latest complete one)")
    p.add_argument("--no-demo-model", dest="demo_model_if_unset", action="store_false",
                   help="never fall back to a random demo checkpoint")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("backfill", help="submit an asset backfill of a cadence's chain, run by the daemon")
    p.add_argument("--cadence", choices=cadences, default=DAILY.name)
    p.add_argument("--from", dest="start", required=True, help="first window, e.g. 2025-03-01 or 2026-03-02-15:00")
    p.add_argument("--to", dest="end", required=True, help="last window, inclusive")
    p.add_argument("--no-wait", action="store_true", help="submit and return; do not wait for the runs and their summary")
    p.add_argument("--wait-timeout-s", type=float, default=None, help="stop waiting after this many seconds (exit 3)")
    p.add_argument("--with-ensemble", action="store_true",
                   help="also backfill ensemble_forecasts_<cadence> over the same windows, each after its chain window")
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("backfill-summary", help="what a backfill's runs did: windows written, nothing to forecast, exclusions")
    p.add_argument("backfill_id")
    p.add_argument("--no-wait", action="store_true", help="summarise now, even if runs are still going")
    p.set_defaults(func=cmd_backfill_summary)


def _add_model_commands(sub, cadences: list[str]) -> None:
    p = sub.add_parser("init-model", help="write a random-initialised Chronos-2 checkpoint (weights are RANDOM)")
    p.add_argument("--size", choices=["tiny", "full"], required=True,
                   help="tiny: the chronos tests' geometry; full: the published 120M-parameter geometry")
    p.add_argument("dir")
    p.set_defaults(func=cmd_init_model)

    p = sub.add_parser("latest", help="print the latest forecast of one symbol, read as the gateway reads it")
    p.add_argument("symbol")
    p.add_argument("--timeframe", choices=cadences, default=DAILY.name)
    p.add_argument("--model", default="kronos-base", help="model_name to read (default: kronos-base, as the gateway)")
    p.set_defaults(func=cmd_latest)

    p = sub.add_parser("models", help="the fine-tuned checkpoints' registry: list, promote a challenger, roll back")
    models = p.add_subparsers(dest="action", required=True)
    q = models.add_parser("list", help="each cadence's checkpoints, the challenger's promotion test, the latest events")
    q.add_argument("--cadence", choices=cadences, help="one cadence (default: both)")
    q.add_argument("--events", type=int, default=10, help="events to show per cadence (default 10)")
    q = models.add_parser("promote", help="make the challenger the champion if it passes the promotion test")
    q.add_argument("--cadence", choices=cadences, required=True)
    q.add_argument("--checkpoint", type=int, help="a checkpoint id (default: the cadence's challenger)")
    q.add_argument("--force", action="store_true", help="promote even though the test does not pass (needs --reason)")
    q.add_argument("--reason", help="why, recorded in the event log")
    q = models.add_parser("rollback", help="undo the promotion of the current champion: the one before serves again")
    q.add_argument("--cadence", choices=cadences, required=True)
    q.add_argument("--reason", help="why, recorded in the event log")
    p.set_defaults(func=cmd_models)


def _add_service_commands(sub) -> None:
    p = sub.add_parser("serve", help="keep Chronos-2 loaded; answer HTTP forecasts and the runs that set CHRONOS2_SERVER")
    p.add_argument("--host", help="address to bind (default SERVE_HOST, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default SERVE_PORT, else 8201)")
    p.add_argument("--socket", help=f"the runs' Unix socket (default CHRONOS2_SERVER, else ./{DEFAULT_SOCKET})")
    p.add_argument("--no-socket", action="store_true", help="serve HTTP only")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="is it working: database, migrations, model, newest windows, the service")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--no-model", dest="model", action="store_false", help="do not load the model (it takes seconds)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("frames", help="the frames the chain's steps leave for each other (FRAMES_DIR)")
    frames = p.add_subparsers(dest="frames_cmd", required=True)
    p = frames.add_parser("prune", help="delete frames no run released that are older than FRAMES_RETENTION_DAYS")
    p.add_argument("--days", type=_positive_int, default=None, help="keep this many days instead (default FRAMES_RETENTION_DAYS)")
    p.set_defaults(func=cmd_frames_prune)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # pgserver logs every initdb/pg_ctl command line, and alembic (Dagster's storage) each plugin, at INFO.
    for chatty in ("pgserver", "alembic"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # BackfillPolicy is marked beta in Dagster 1.13; the policy is deliberate (docs/backfills.md).
    warnings.filterwarnings("ignore", message=".*backfill_policy.*beta", category=Warning)
    # So is multi_observable_source_asset, which makes Kronos's rows an observed asset (docs/ensemble.md).
    warnings.filterwarnings("ignore", message=".*multi_observable_source_asset.*beta", category=Warning)
    args = build_parser().parse_args(argv)
    from forecasting_pipeline.settings import Settings, SettingsError

    # Every command reads the settings first, so a bad value stops it here, named, before any work.
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        for problem in error.problems:
            print(f"forecasting-pipeline: {problem}", file=sys.stderr)
        return 2
    # Dagster finds its instance through DAGSTER_HOME: unset, in a source checkout, the repository's own.
    if settings.dagster_home:
        os.environ["DAGSTER_HOME"] = settings.dagster_home
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
