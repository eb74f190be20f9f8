"""Dagster metadata from the domain's results: the one place where frames, findings and rejections become
tables, JSON and pictures a person reads in the UI, and where results become asset check results.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

import dagster as dg
import polars as pl

from forecasting_pipeline.ensemble.members import MEMBERS, KronosWindow
from forecasting_pipeline.ensemble.window_ensembles import EnsembleRun
from forecasting_pipeline.forecasting.predict import QUANTILE_LEVELS
from forecasting_pipeline.forecasting.shaping import rejections_frame
from forecasting_pipeline.forecasting.window_forecasts import (
    HORIZON_RULES,
    INPUT_RULES,
    QUANTILE_RULES,
    WindowForecasts,
)
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.validation import EXCLUDED
from forecasting_pipeline.market.window_bars import WindowBars
from forecasting_pipeline.scoring.canaries import EnsembleCanary, LossCanary, SignFlip
from forecasting_pipeline.scoring.coverage import CoverageAlarm
from forecasting_pipeline.scoring.evaluation import Review, ScoringRun
from forecasting_pipeline.scoring.forecasts import NO_BAR_BEFORE
from forecasting_pipeline.scoring.scores import scores_by_symbol
from forecasting_pipeline.serving.plots import png_markdown, rolling_scores_png

# Forecast checks of chronos2_forecasts_<cadence>: name, description, the rejection rules it reports.
FORECAST_CHECKS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("inputs_in_model_range", "Every instrument's context is finite in float32, the model's precision.", INPUT_RULES),
    ("quantiles_ordered_and_finite", "p10 <= p50 <= p90 and every value finite, for every step.", QUANTILE_RULES),
    ("horizon_complete", "Every instrument has exactly `horizon` steps.", HORIZON_RULES),
)


def markdown_table(frame: pl.DataFrame, max_rows: int = 30) -> dg.MetadataValue:
    """The first ``max_rows`` rows as a markdown table; floats to 6 significant digits."""
    head = frame.head(max_rows)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    for row in head.iter_rows():
        # A '|' inside a value would split its cell.
        cells = [f"{v:.6g}" if isinstance(v, float) else str(v).replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def png_metadata(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG as markdown metadata, which the Dagster UI renders as an image."""
    return dg.MetadataValue.md(png_markdown(png, alt))


# The check of ml_predictions_<cadence> that fails when a window of the run had nothing to forecast.
EVERY_WINDOW_WRITTEN = "every_window_written"

# Per instrument, exclusions (or rejections) listed one line each up to this many windows; beyond
# that, one line sums them up, so a long backfill of a broken feed does not flood the event log.
LINES_PER_INSTRUMENT = 3


def window_bars_metadata(result: WindowBars, source: str, synthetic: bool, instruments: int) -> dict[str, object]:
    """Metadata of ``ohlcv_<cadence>``: the source, the row counts, exclusions and every finding."""
    return {
        "source": source,
        "synthetic": synthetic,
        "windows": len(result.windows),
        "instruments": instruments,
        "rows": result.bars.rows(),
        "excluded": dg.MetadataValue.json(result.excluded),
        "excluded_by_rule": dg.MetadataValue.json(result.excluded_by_rule()),
        "nothing_to_forecast": dg.MetadataValue.json(result.empty),
        "findings": len(result.findings),
        "findings_table": markdown_table(result.findings, 50),
    }


def exclusion_messages(result: WindowBars) -> list[str]:
    """Log lines naming each excluded instrument, its windows and the rules that excluded it."""
    lines = {}
    for window, validated in result.windows.items():
        for symbol in validated.excluded:
            reasons = "; ".join(f"{f.rule}: {f.message}" for f in validated.findings_of(symbol) if f.action == EXCLUDED)
            lines.setdefault(symbol, []).append(f"{window}: {symbol} excluded: {reasons}")
    return _at_most_per_instrument(lines, "excluded from")


def rejection_messages(result: WindowForecasts) -> list[str]:
    """Log lines naming each instrument left out of the forecasts, its windows and why."""
    lines = {}
    for r in result.rejected:
        lines.setdefault(r.symbol, []).append(f"{r.window}: {r.symbol} left out ({r.rule}): {r.message}")
    return _at_most_per_instrument(lines, "left out of")


def _at_most_per_instrument(lines: dict[str, list[str]], what: str) -> list[str]:
    out = []
    for symbol, mine in lines.items():
        if len(mine) <= LINES_PER_INSTRUMENT:
            out += mine
        else:
            out.append(f"{symbol} {what} {len(mine)} windows (metadata lists them); the first: {mine[0]}")
    return out


def nothing_to_forecast_reasons(context: dg.AssetExecutionContext, cadence: str) -> dict[str, str]:
    """Window -> why it had nothing to forecast, as this run's bar and forecast steps recorded it.

    A window whose every instrument validation excluded is explained by ``ohlcv_<cadence>`` (which
    rule, which bar); one whose every forecast was rejected, by ``chronos2_forecasts_<cadence>``.
    """
    recorded: dict[dg.AssetKey, dict[str, str]] = {}
    for record in context.instance.all_logs(context.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = record.asset_materialization
        value = materialization.metadata.get("nothing_to_forecast") if materialization else None
        if value is not None:
            recorded.setdefault(materialization.asset_key, dict(value.value))
    return {
        **recorded.get(dg.AssetKey(f"chronos2_forecasts_{cadence}"), {}),
        **recorded.get(dg.AssetKey(f"ohlcv_{cadence}"), {}),
    }


def written_window_metadata(frame: pl.DataFrame, rows: int, done: int, total: int, database: str) -> dict[str, object]:
    """Metadata of one window of ``ml_predictions_<cadence>``, logged when its rows are committed.

    A run of one window previews its first step's rows; a backfill run's windows do not, as they
    draw no fan chart: one window's table among hundreds says little, and building each is work
    in every window.
    """
    out: dict[str, object] = {"rows": rows, "windows_done": done, "windows_total": total, "database": database}
    if total == 1:
        out["preview"] = markdown_table(
            frame.filter(pl.col("step") == 1).select("symbol", "as_of", "ts", "p10", "p50", "p90")
        )
    return out


def windows_written_check(
    forecasts: Mapping[str, pl.DataFrame], written: dict[str, pl.DataFrame], reasons: dict[str, str]
) -> dg.AssetCheckResult:
    """Fails, naming them and why, when windows of the run had nothing to forecast and so no rows."""
    missing = {window: reasons.get(window, "nothing to forecast") for window in sorted(forecasts) if window not in written}
    return dg.AssetCheckResult(
        check_name=EVERY_WINDOW_WRITTEN,
        passed=not missing,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "windows_requested": len(forecasts),
            "windows_written": len(written),
            "windows_with_nothing_to_forecast": dg.MetadataValue.json(missing),
            "rerun": dg.MetadataValue.json(sorted(missing)),
        },
    )


def bar_check_results(
    result: WindowBars, universe: list[Instrument], check_of: dict[str, str]
) -> list[dg.AssetCheckResult]:
    """One result per instrument of the run that has a check: it passes unless the instrument was excluded."""
    out = []
    for instrument in universe:
        if instrument.symbol not in check_of:
            continue
        mine = result.findings.filter(pl.col("symbol") == instrument.symbol).drop("symbol")
        out.append(dg.AssetCheckResult(
            check_name=check_of[instrument.symbol],
            passed=instrument.symbol not in result.excluded,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "excluded_windows": dg.MetadataValue.json(result.excluded.get(instrument.symbol, [])),
                "findings": len(mine),
                "findings_table": markdown_table(mine, 20),
            },
        ))
    return out


def forecast_metadata(result: WindowForecasts) -> dict[str, object]:
    """Metadata of ``chronos2_forecasts_<cadence>``: the model, where it ran, what was left out, a preview."""
    out: dict[str, object] = {
        "context_length": result.context_length,
        "horizon": result.horizon,
        "quantiles": dg.MetadataValue.json(list(QUANTILE_LEVELS)),
        "series": result.series,
        "distinct_series": result.distinct_series,
        "windows": len(result.forecasts),
        "rejected": dg.MetadataValue.json(result.left_out()),
        "nothing_to_forecast": dg.MetadataValue.json(result.empty),
        "rejected_table": markdown_table(rejections_frame(result.rejected)),
    }
    if result.prediction is not None:
        done = result.prediction
        out |= {
            "model_version": done.model.version,
            "device": done.model.device,
            "dtype": done.model.dtype,
            "model_load_seconds": round(done.timings["model_load_seconds"], 3),
            "predict_seconds": round(done.timings["predict_seconds"], 3),
            "model_cpu_seconds": round(done.timings["model_cpu_seconds"], 3),
            **done.device_run.metadata(),
        }
    last = max(result.forecasts, default=None)
    if last is not None:
        out["preview"] = markdown_table(
            result.forecasts[last].filter(pl.col("step") == 1).select("symbol", "as_of", "ts", "p10", "p50", "p90")
            .with_columns(pl.lit(last).alias("window"))
        )
    return out


def forecast_check_results(result: WindowForecasts) -> list[dg.AssetCheckResult]:
    """One result per forecast check: it fails, listing them, when an instrument was left out by its rules."""
    results = []
    for name, _description, rules in FORECAST_CHECKS:
        problems = result.problems(rules)
        results.append(dg.AssetCheckResult(
            check_name=name, passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
            metadata={"left_out": len(problems), "problems": dg.MetadataValue.json(problems[:20])},
        ))
    return results


def _flip_json(flip: SignFlip) -> dict:
    return {
        "started_at": flip.started_at.isoformat() if flip.started_at else None,
        "confirmed_at": flip.confirmed_at.isoformat() if flip.confirmed_at else None,
        "from_sign": flip.from_sign,
        "to_sign": flip.to_sign,
        "rolling_diff": round(flip.value, 6),
    }


def scoring_metadata(run: ScoringRun, review: Review, source: str, database: str) -> dict[str, object]:
    """Metadata of ``forecast_scores_<cadence>``: what the run added, and the stored scores as tables and a chart."""
    metadata: dict[str, object] = {
        "scored_through": run.until.isoformat(),
        "run": f"rebuilt from scratch ({run.rebuild_reason})" if run.rebuild_reason else "incremental",
        "rebuilt_symbols": dg.MetadataValue.json(run.rebuilt_symbols),
        "rows": review.scores.height,
        "forecasts_scored": dg.MetadataValue.json(review.scored),
        "forecasts_scored_this_run": dg.MetadataValue.json(run.scored),
        "forecasts_awaiting_realisation": dg.MetadataValue.json(run.pending),
        "forecasts_not_scored": dg.MetadataValue.json(review.not_scored),
        "forecasts_without_as_of": dg.MetadataValue.json(review.not_scored.get(NO_BAR_BEFORE, {})),
        "forecasts_outside_universe": dg.MetadataValue.json(run.outside_universe),
        "unreadable_bars": dg.MetadataValue.json(run.unreadable_bars),
        "chart_and_canaries_from": review.review_from.isoformat() if review.review_from else "every stored forecast",
        "source": source,
        "database": database,
    }
    if review.summary.height:
        metadata["summary"] = markdown_table(review.summary.select(
            "model_name", "levels", "n", "n_symbols", "mean_pinball", "pinball_p50", "coverage_p10_p90",
            "below_p10_rate", "above_p90_rate", "relative_mae", "kupiec_p_value",
        ))
        metadata["by_symbol"] = markdown_table(scores_by_symbol(review.sums), max_rows=200)
    plotted = review.rolling.filter(pl.col("value").is_not_null())
    if plotted.height:
        title = f"{run.timeframe} forecasts: rolling coverage and error relative to the random walk"
        metadata["rolling_scores"] = png_metadata(rolling_scores_png(plotted, title=title), f"rolling scores, {run.timeframe}")
    return metadata


def sign_flip_check_result(check_name: str, canary: LossCanary | None) -> dg.AssetCheckResult:
    """WARN while the loss canary's latest confirmed flip is recent; its comparison and flips as metadata."""
    return dg.AssetCheckResult(
        check_name=check_name,
        passed=canary is None or not canary.fired,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "compared": f"{canary.model_a} - {canary.model_b}" if canary else "no two models share scored forecasts",
            "loss": canary.loss_column if canary else "",
            "latest_rolling_diff": canary.latest_rolling_diff if canary else None,
            "forecast_dates": canary.comparison.height if canary else 0,
            "recent_flips": dg.MetadataValue.json([_flip_json(f) for f in canary.recent] if canary else []),
            "all_flips": dg.MetadataValue.json([_flip_json(f) for f in canary.flips] if canary else []),
        },
    )


def coverage_check_result(check_name: str, alarms: dict[str, CoverageAlarm]) -> dg.AssetCheckResult:
    """WARN when a model's latest band coverage fails Kupiec's test; every model's statistics as metadata."""
    failing = sorted(m for m, a in alarms.items() if a.fired)
    return dg.AssetCheckResult(
        check_name=check_name,
        passed=not failing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "failing_models": dg.MetadataValue.json(failing),
            "models": dg.MetadataValue.json({
                m: {"n_obs": a.n_obs, "n_fail": a.n_fail, "observed_fail_rate": round(a.observed_rate, 6),
                    "expected_fail_rate": a.expected_rate, "kupiec_p_value": a.p_value, "enough_data": a.enough_data}
                for m, a in alarms.items()
            }),
        },
    )


# The check of ensemble_forecasts_<cadence> that fails when a window of the run got no ensemble rows.
EVERY_WINDOW_COMBINED = "every_window_combined"


def _weight_cell(weights: dict, member: str) -> str:
    if member not in weights:
        return "-"
    w = weights[member]
    return f"{w['location']:.2f}" + (f" / {w['band']:.2f}" if w["band"] is not None else "")


def _band_factors_cell(calibration: dict) -> str:
    if not calibration["applied"]:
        return "none"
    return "; ".join(f"{g['steps']}: {g['lower']:.2f} / {g['upper']:.2f}" for g in calibration["groups"])


def ensemble_weights_table(run: EnsembleRun, window: str) -> pl.DataFrame:
    """One row per instrument of a window: each member's location / band weights and what they rest on."""
    rows = []
    for e in run.explanations_of(window):
        rows.append({
            "symbol": e.symbol, "as_of": e.as_of.isoformat(),
            **{member: _weight_cell(e.weights, member) for member in MEMBERS},
            "scored": e.details["scored_forecasts"], "warm_up": e.details["warm_up"],
            "band_factors": _band_factors_cell(e.details["calibration"]),
            "missing": "; ".join(f"{m}: {why}" for m, why in e.missing.items()),
        })
    return pl.DataFrame(rows)


def ensemble_window_metadata(run: EnsembleRun, window: str, rows: int, database: str) -> dict[str, object]:
    """Metadata of one window of ``ensemble_forecasts_<cadence>``: its weights, the members it lacked, a preview."""
    frame = run.forecasts[window]
    missing = run.missing_members(window)
    return {
        "rows": rows,
        "model_version": run.model_version,
        "database": database,
        "weights": markdown_table(ensemble_weights_table(run, window), max_rows=100),
        "weights_read_as": "location weight / band weight per member (band: members with a band only); "
                           "band_factors: per horizon group (steps), the calibration's factors on the lower / upper "
                           "half-widths",
        "combined_without": dg.MetadataValue.json(missing),
        "without_kronos": sum(1 for lacking in missing.values() if "kronos-base" in lacking),
        "left_out": dg.MetadataValue.json(run.left_out.get(window, {})),
        "preview": markdown_table(frame.filter(pl.col("step") == 1).select("symbol", "as_of", "ts", "p10", "p50", "p90")),
    }


def missing_member_messages(run: EnsembleRun) -> list[str]:
    """Log lines: each instrument combined without a member, or left out, and why (a few per instrument)."""
    lines: dict[str, list[str]] = {}
    for window in sorted(run.forecasts):
        for symbol, lacking in run.missing_members(window).items():
            for member, why in lacking.items():
                lines.setdefault(f"{symbol} {member}", []).append(
                    f"{window}: {symbol} combined without {member}: {why}")
    for window, left_out in sorted(run.left_out.items()):
        for symbol, why in left_out.items():
            lines.setdefault(symbol, []).append(f"{window}: {symbol} has no ensemble forecast: {why}")
    return _at_most_per_instrument(lines, "affected in")


def windows_combined_check(run: EnsembleRun, windows: list[str]) -> dg.AssetCheckResult:
    """Fails (WARN), naming them and why, when windows of the run got no ensemble rows."""
    empty = {w: run.left_out.get(w, {}) for w in windows if w not in run.forecasts}
    return dg.AssetCheckResult(
        check_name=EVERY_WINDOW_COMBINED,
        passed=not empty,
        # The chain's own check (ERROR) already fails a window with nothing to forecast.
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "windows_requested": len(windows),
            "windows_combined": len(run.forecasts),
            "windows_without_ensemble": dg.MetadataValue.json(empty),
        },
    )


def kronos_observation_metadata(
    kronos: KronosWindow, chain_at: datetime | None, wait: timedelta | None
) -> dict[str, object]:
    """Metadata of an observation of ``kronos_base_<cadence>``: how much of the window Kronos has written."""
    total = len(kronos.written) + len(kronos.not_written)
    if kronos.complete:
        status = f"Kronos has forecast all {total} instruments"
    elif wait is None:
        status = f"Kronos has forecast {len(kronos.written)} of {total} instruments"
    else:
        status = (f"waited {wait} after the chain; Kronos has forecast {len(kronos.written)} of {total} instruments, "
                  "the ensemble combines the others without it")
    return {
        "status": status,
        "instruments_written": len(kronos.written),
        "instruments_not_written": dg.MetadataValue.json(list(kronos.not_written)),
        "newest_written_at": kronos.newest_written_at.isoformat() if kronos.newest_written_at else "none",
        "chain_written_at": chain_at.isoformat() if chain_at else "not yet",
    }


def ensemble_check_result(check_name: str, canary: EnsembleCanary | None) -> dg.AssetCheckResult:
    """WARN when the ensemble has been worse than its best member for a while; the comparison as metadata."""
    return dg.AssetCheckResult(
        check_name=check_name,
        passed=canary is None or not canary.fired,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "compared": f"ensemble - {canary.best_member}" if canary else "no scored ensemble forecasts",
            "loss": canary.loss_column if canary else "",
            "mean_losses": dg.MetadataValue.json(
                {m: round(v, 6) for m, v in canary.mean_losses.items()} if canary else {}),
            "latest_rolling_diff": canary.latest_rolling_diff if canary else None,
            "forecast_dates": canary.comparison.height if canary else 0,
        },
    )
