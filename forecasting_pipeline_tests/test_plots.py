"""Tests for forecasting_pipeline.serving.plots: PNG bytes, pixel sizes, overlay handling and markdown wrapping."""

from __future__ import annotations

import base64
import datetime as dt
import re

import dagster as dg
import numpy as np
import polars as pl
import pytest

from forecasting_pipeline.orchestration.metadata import png_metadata
from forecasting_pipeline.serving.plots import (
    FAN_HEADER_IN,
    FAN_PANEL_SIZE_IN,
    FIGURE_DPI,
    PNG_SIGNATURE,
    SCORES_HEADER_IN,
    SCORES_PANEL_SIZE_IN,
    fan_figure_size,
    forecast_fan_png,
    png_markdown,
    reference_level,
    rolling_scores_png,
)

UTC_US = pl.Datetime("us", "UTC")
T0 = dt.datetime(2025, 3, 3, tzinfo=dt.timezone.utc)
HISTORY_BARS = 150
HORIZON = 24


def _png_pixel_size(png: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which always follows the 8-byte signature."""
    assert png[12:16] == b"IHDR"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _frames(n_symbols: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Hourly history, a Chronos-2-shaped forecast and a Kronos-shaped overlay for ``n_symbols``.

    The overlay covers every other symbol, as Kronos may not run on every instrument.
    """
    rng = np.random.default_rng(seed)
    history_ts = [T0 + dt.timedelta(hours=i) for i in range(HISTORY_BARS)]
    as_of = history_ts[-1]
    forecast_ts = [as_of + dt.timedelta(hours=step) for step in range(1, HORIZON + 1)]
    history, forecasts, overlay = [], [], []
    for index in range(n_symbols):
        symbol = f"SYM{index:02d}"
        close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, HISTORY_BARS)))
        p50 = close[-1] * np.exp(np.cumsum(rng.normal(0.0, 0.002, HORIZON)))
        half_width = close[-1] * 0.01 * np.sqrt(np.arange(1, HORIZON + 1))
        history.append(pl.DataFrame({"symbol": symbol, "ts": history_ts, "close": close}))
        forecasts.append(
            pl.DataFrame(
                {
                    "symbol": symbol,
                    "as_of": [as_of] * HORIZON,
                    "step": pl.Series(range(1, HORIZON + 1), dtype=pl.Int32),
                    "ts": forecast_ts,
                    "p10": p50 - half_width,
                    "p50": p50,
                    "p90": p50 + half_width,
                }
            )
        )
        if index % 2 == 0:
            overlay.append(
                pl.DataFrame(
                    {
                        "symbol": symbol,
                        "as_of": [as_of] * HORIZON,
                        "ts": forecast_ts,
                        "p50": p50 * (1.0 + rng.normal(0.0, 0.004, HORIZON)),
                    }
                )
            )

    def utc(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(pl.col(c).cast(UTC_US) for c in ("ts", "as_of") if c in frame.columns)

    return utc(pl.concat(history)), utc(pl.concat(forecasts)), utc(pl.concat(overlay))


@pytest.fixture(scope="module")
def frames_23() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    return _frames(23)


@pytest.fixture(scope="module")
def fan_23_without_overlay(frames_23) -> bytes:
    history, forecasts, _ = frames_23
    return forecast_fan_png(history, forecasts, title="Chronos-2, 1h")


def test_when_fan_for_23_symbols_then_png_of_figure_size_times_dpi_under_400_kb(frames_23):
    history, forecasts, overlay = frames_23
    png = forecast_fan_png(history, forecasts, overlay, history_bars=120, title="Chronos-2 vs Kronos, 1h")

    width_in, height_in = fan_figure_size(23, ncols=5)
    assert png[:8] == PNG_SIGNATURE
    assert _png_pixel_size(png) == (round(width_in * FIGURE_DPI), round(height_in * FIGURE_DPI))
    # 23 panels in 5 columns is a 5 x 5 grid.
    assert (width_in, height_in) == fan_figure_size(25, ncols=5)
    assert len(png) < 400 * 1024


@pytest.mark.parametrize(("n_symbols", "ncols", "grid"), [(1, 5, (1, 1)), (7, 5, (5, 2)), (30, 5, (5, 6)), (4, 2, (2, 2))])
def test_when_n_symbols_vary_then_pixel_size_follows_the_grid(n_symbols, ncols, grid):
    history, forecasts, _ = _frames(n_symbols)
    png = forecast_fan_png(history, forecasts, ncols=ncols)

    assert _png_pixel_size(png) == tuple(round(x * FIGURE_DPI) for x in fan_figure_size(n_symbols, ncols))
    cols, rows = grid
    panel_w, panel_h = FAN_PANEL_SIZE_IN
    assert fan_figure_size(n_symbols, ncols) == pytest.approx((cols * panel_w, rows * panel_h + FAN_HEADER_IN))


def test_when_overlay_given_then_image_differs(frames_23, fan_23_without_overlay):
    history, forecasts, overlay = frames_23

    with_overlay = forecast_fan_png(history, forecasts, overlay, title="Chronos-2, 1h")

    assert with_overlay != fan_23_without_overlay


@pytest.mark.parametrize("overlay_kind", ["none", "empty", "other_as_of"])
def test_when_overlay_absent_empty_or_from_another_as_of_then_image_equals_no_overlay(
    frames_23, fan_23_without_overlay, overlay_kind
):
    history, forecasts, overlay = frames_23
    if overlay_kind == "none":
        overlay = None
    elif overlay_kind == "empty":
        overlay = overlay.clear()
    else:
        # A Kronos forecast from a different origin must not be drawn beside this Chronos one.
        overlay = overlay.with_columns(pl.col("as_of") - pl.duration(hours=1))

    png = forecast_fan_png(history, forecasts, overlay, title="Chronos-2, 1h")

    assert png == fan_23_without_overlay


def test_when_history_lacks_a_symbol_then_fan_still_renders(frames_23):
    history, forecasts, _ = frames_23

    png = forecast_fan_png(history.filter(pl.col("symbol") != "SYM03"), forecasts)

    assert _png_pixel_size(png) == tuple(round(x * FIGURE_DPI) for x in fan_figure_size(23))


def test_when_forecasts_empty_then_value_error(frames_23):
    history, forecasts, _ = frames_23

    with pytest.raises(ValueError, match="forecasts is empty"):
        forecast_fan_png(history, forecasts.clear())


def test_when_forecasts_lack_a_quantile_column_then_value_error_names_it(frames_23):
    history, forecasts, _ = frames_23

    with pytest.raises(ValueError, match=r"forecasts lacks column\(s\) \['p90'\]"):
        forecast_fan_png(history, forecasts.drop("p90"))


def test_when_png_markdown_then_data_uri_is_image_png_and_round_trips(fan_23_without_overlay):
    markdown = png_markdown(fan_23_without_overlay, "Chronos-2 fan")

    match = re.fullmatch(r"!\[(?P<alt>[^\]]*)\]\(data:(?P<type>[^;]+);base64,(?P<data>[A-Za-z0-9+/=]+)\)", markdown)
    assert match is not None
    assert match["alt"] == "Chronos-2 fan"
    assert match["type"] == "image/png"
    assert base64.b64decode(match["data"], validate=True) == fan_23_without_overlay


def test_when_alt_has_brackets_and_newlines_then_they_are_escaped(fan_23_without_overlay):
    markdown = png_markdown(fan_23_without_overlay, "fan [1h]\nlatest")

    assert markdown.startswith(r"![fan \[1h\] latest](data:image/png;base64,")


def test_when_bytes_are_not_png_then_png_markdown_raises_value_error():
    with pytest.raises(ValueError, match="PNG signature"):
        png_markdown(b"GIF89a....", "not a png")


def test_when_png_metadata_then_markdown_metadata_value(fan_23_without_overlay):
    value = png_metadata(fan_23_without_overlay, "fan")

    assert isinstance(value, dg.MarkdownMetadataValue)
    assert value.md_str == png_markdown(fan_23_without_overlay, "fan")


def _scores(models: list[str], metrics: list[str], n_days: int = 30) -> pl.DataFrame:
    rng = np.random.default_rng(1)
    rows = [
        {
            "as_of": T0 + dt.timedelta(days=day),
            "model_name": model,
            "metric": metric,
            "value": float(reference_level(metric) + rng.normal(0.0, 0.05)),
        }
        for model in models
        for metric in metrics
        for day in range(n_days)
    ]
    return pl.DataFrame(rows).with_columns(pl.col("as_of").cast(UTC_US))


def test_when_rolling_scores_for_two_models_and_two_metrics_then_one_panel_per_metric():
    series = _scores(["chronos-2", "kronos-base"], ["coverage_p10_p90", "relative_mae"])

    png = rolling_scores_png(series, "Rolling scores, 1h")

    width_in, panel_h_in = SCORES_PANEL_SIZE_IN
    assert png[:8] == PNG_SIGNATURE
    assert _png_pixel_size(png) == (
        round(width_in * FIGURE_DPI),
        round((2 * panel_h_in + SCORES_HEADER_IN) * FIGURE_DPI),
    )


def test_when_rolling_scores_all_null_then_value_error():
    series = _scores(["chronos-2"], ["relative_mae"]).with_columns(pl.lit(None, dtype=pl.Float64).alias("value"))

    with pytest.raises(ValueError, match="no non-null values"):
        rolling_scores_png(series, "Rolling scores")


@pytest.mark.parametrize(
    ("metric", "level"),
    [("coverage_p10_p90", 0.8), ("coverage_p05_p95", 0.9), ("relative_mae", 1.0), ("relative_crps", 1.0), ("mae", None)],
)
def test_when_metric_named_then_reference_level_matches(metric, level):
    assert reference_level(metric) == (pytest.approx(level) if level is not None else None)
