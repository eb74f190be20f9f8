"""PNG charts for asset metadata: forecast fans per instrument and rolling forecast scores.

This module owns rendering only. It takes polars frames in the project's contracts and returns
PNG bytes, plus the markdown wrapping the Dagster UI needs to show an image in metadata.

Rendering uses ``matplotlib.figure.Figure`` with ``FigureCanvasAgg`` directly, never
``pyplot``: pyplot keeps global figure state, which is not thread-safe under Dagster's
multi-threaded executors and can try to open a display. Sizes are fixed in inches at a modest
dpi, and no ``bbox_inches="tight"`` is used, so the pixel size of a PNG is known in advance
(``fan_figure_size(...) * FIGURE_DPI``) and the files stay small.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import re
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

# matplotlib is imported where a figure is drawn: its import is slow, and every Dagster
# process that loads the definitions (code server, each run) would pay that even when it draws nothing.
if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

#: Dots per inch of every PNG written here; with the sizes below it gives whole pixel counts.
FIGURE_DPI = 80
#: Size of one small-multiple panel of the forecast fan, in inches (width, height).
FAN_PANEL_SIZE_IN = (3.2, 2.4)
#: Height above the fan's panels for the figure title and the shared legend, in inches.
FAN_HEADER_IN = 0.8
#: Size of one metric panel of the rolling-scores chart, in inches (width, height).
SCORES_PANEL_SIZE_IN = (9.0, 2.8)
#: Height above the score panels for the figure title and the shared legend, in inches.
SCORES_HEADER_IN = 0.8

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_CLOSE_COLOR = "#333333"
_CHRONOS_COLOR = "#1f77b4"
_KRONOS_COLOR = "#d62728"
_AS_OF_COLOR = "#7f7f7f"
_MODEL_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")

_HISTORY_COLUMNS = ("symbol", "ts", "close")
_FORECAST_COLUMNS = ("symbol", "as_of", "ts", "p10", "p50", "p90")
_OVERLAY_COLUMNS = ("symbol", "ts", "p50")
_SCORE_COLUMNS = ("as_of", "model_name", "metric", "value")

# Coverage metrics are named after their quantile pair, so the nominal rate can be read off the name.
_COVERAGE_NAME = re.compile(r"^coverage_p(\d{1,2})_p(\d{1,2})$")


def fan_figure_size(n_symbols: int, ncols: int = 5) -> tuple[float, float]:
    """Return the size in inches of a forecast fan with ``n_symbols`` panels.

    Parameters
    ----------
    n_symbols
        Number of panels, at least 1.
    ncols
        Requested number of columns; fewer are used when there are fewer symbols.

    Returns
    -------
    tuple of float
        ``(width, height)`` in inches. Multiply by :data:`FIGURE_DPI` for pixels.
    """
    ncols_used, nrows = _grid_shape(n_symbols, ncols)
    width_in, height_in = FAN_PANEL_SIZE_IN
    return ncols_used * width_in, nrows * height_in + FAN_HEADER_IN


def forecast_fan_png(
    history: pl.DataFrame,
    forecasts: pl.DataFrame,
    overlay: pl.DataFrame | None = None,
    history_bars: int = 120,
    title: str = "",
    ncols: int = 5,
) -> bytes:
    """Render Chronos-2 forecast fans, one small panel per symbol, as a PNG.

    Each panel shows the closes before the forecast origin, the p10-p90 band, the p50 line,
    a vertical line at ``as_of`` and, where ``overlay`` has rows for the symbol, the Kronos p50
    as a dashed line. One legend is shared by the whole figure.

    Parameters
    ----------
    history
        Columns ``symbol`` (Utf8), ``ts`` (Datetime, bar close time), ``close`` (Float64).
        May lack some symbols; their panels then show the forecast only.
    forecasts
        Columns ``symbol``, ``as_of``, ``ts``, ``p10``, ``p50``, ``p90``; ``step`` is ignored.
        One panel is drawn per distinct symbol, in sorted order. When a symbol has several
        ``as_of`` the latest is drawn.
    overlay
        Optional Kronos forecast with at least ``symbol``, ``ts``, ``p50``. If it has ``as_of``,
        only rows with the same ``as_of`` as the Chronos panel are drawn, so the two lines are
        always forecasts from the same origin. ``None``, empty, or partial coverage is fine.
    history_bars
        How many closes at or before ``as_of`` to draw. Closes after ``as_of`` and up to the
        last forecast step (the realised path, in a backtest) are drawn as well.
    title
        Figure title; none when empty.
    ncols
        Maximum number of panel columns.

    Returns
    -------
    bytes
        The PNG, of ``fan_figure_size(n_symbols, ncols)`` inches at :data:`FIGURE_DPI`.

    Raises
    ------
    ValueError
        If ``forecasts`` is empty, a frame lacks a required column, or ``history_bars`` or
        ``ncols`` is below 1.
    """
    overlay = _checked_fan_inputs(history, forecasts, overlay, history_bars)
    fig, drew_overlay = _fan_figure(history, forecasts, overlay, history_bars, ncols)
    _add_header(fig, title, _fan_legend_handles(drew_overlay), header_in=FAN_HEADER_IN)
    return _to_png(fig)


def rolling_scores_png(series: pl.DataFrame, title: str) -> bytes:
    """Render rolling forecast scores, one panel per metric and one line per model, as a PNG.

    Parameters
    ----------
    series
        Columns ``as_of`` (Datetime), ``model_name`` (Utf8), ``metric`` (Utf8, e.g.
        ``"coverage_p10_p90"``, ``"relative_mae"``) and ``value`` (Float64). Null values are
        skipped; NaN leaves a gap in the line.
    title
        Figure title; none when empty.

    Returns
    -------
    bytes
        The PNG. Each panel carries a dashed reference line where :func:`reference_level`
        knows one for its metric (the nominal rate for coverage, 1.0 for relative errors).

    Raises
    ------
    ValueError
        If ``series`` is empty or lacks a required column.
    """
    _require_columns(series, _SCORE_COLUMNS, "series")
    series = series.filter(pl.col("value").is_not_null())
    if series.height == 0:
        raise ValueError("series has no non-null values: there is nothing to plot")

    metrics = sorted(series.get_column("metric").unique().to_list())
    models = sorted(series.get_column("model_name").unique().to_list())
    # A model keeps one colour in every panel, so the shared legend reads across all of them.
    colors = {model: _MODEL_COLORS[i % len(_MODEL_COLORS)] for i, model in enumerate(models)}
    fig = _scores_figure(series, metrics, colors)
    handles = [_line_handle(color=colors[model], linewidth=1.3, label=model) for model in models]
    if any(reference_level(metric) is not None for metric in metrics):
        handles.append(_line_handle(color=_AS_OF_COLOR, linewidth=0.9, linestyle="--", label="reference"))
    _add_header(fig, title, handles, header_in=SCORES_HEADER_IN)
    return _to_png(fig)


def reference_level(metric: str) -> float | None:
    """Return the level a metric should sit at, or ``None`` when there is no natural one.

    ``coverage_pXX_pYY`` gives the nominal coverage ``(YY - XX) / 100`` (0.8 for
    ``coverage_p10_p90``); any ``relative_*`` metric, a ratio to a baseline, gives 1.0.
    """
    match = _COVERAGE_NAME.match(metric)
    if match:
        low, high = int(match.group(1)), int(match.group(2))
        if low < high:
            return (high - low) / 100.0
    if metric.startswith("relative_"):
        return 1.0
    return None


def png_markdown(png: bytes, alt: str) -> str:
    """Return a markdown image holding ``png`` as a base64 data URI.

    Parameters
    ----------
    png
        PNG bytes, e.g. from :func:`forecast_fan_png`.
    alt
        Alternative text. Brackets are escaped and line breaks flattened, since either would
        end the markdown image early.

    Returns
    -------
    str
        ``![alt](data:image/png;base64,...)``.

    Raises
    ------
    ValueError
        If ``png`` does not start with the PNG signature, as the URI would then lie about its type.
    """
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError(f"png does not start with the PNG signature (first bytes: {png[:8]!r})")
    safe_alt = " ".join(alt.split()).replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    encoded = base64.b64encode(png).decode("ascii")
    return f"![{safe_alt}](data:image/png;base64,{encoded})"


def _checked_fan_inputs(
    history: pl.DataFrame, forecasts: pl.DataFrame, overlay: pl.DataFrame | None, history_bars: int
) -> pl.DataFrame | None:
    """Raise ``ValueError`` on unusable fan inputs; return the overlay, or ``None`` when it has no rows."""
    if forecasts.height == 0:
        raise ValueError("forecasts is empty: there is nothing to plot (expected at least one row per symbol)")
    if history_bars < 1:
        raise ValueError(f"history_bars must be at least 1, got {history_bars}")
    _require_columns(forecasts, _FORECAST_COLUMNS, "forecasts")
    _require_columns(history, _HISTORY_COLUMNS, "history")
    if overlay is None or overlay.height == 0:
        return None
    _require_columns(overlay, _OVERLAY_COLUMNS, "overlay")
    return overlay


def _fan_figure(
    history: pl.DataFrame, forecasts: pl.DataFrame, overlay: pl.DataFrame | None, history_bars: int, ncols: int
) -> tuple[Figure, bool]:
    """Draw one fan panel per symbol, in sorted order; return the figure and whether an overlay line was drawn."""
    symbols = sorted(forecasts.get_column("symbol").unique().to_list())
    history_by_symbol = _split_by_symbol(history.select(_HISTORY_COLUMNS).sort("ts"))
    forecasts_by_symbol = _split_by_symbol(forecasts.sort("ts"))
    overlay_by_symbol = _split_by_symbol(overlay.sort("ts")) if overlay is not None else {}

    ncols_used, nrows = _grid_shape(len(symbols), ncols)
    fig = _new_figure(fan_figure_size(len(symbols), ncols))
    _place_grid(fig, nrows, ncols_used, header_in=FAN_HEADER_IN, hspace=0.45, wspace=0.28)

    drew_overlay = False
    for index, symbol in enumerate(symbols):
        ax = fig.add_subplot(nrows, ncols_used, index + 1)
        drew_overlay |= _draw_fan_panel(
            ax,
            symbol,
            history_by_symbol.get(symbol),
            forecasts_by_symbol[symbol],
            overlay_by_symbol.get(symbol),
            history_bars,
        )
    return fig, drew_overlay


def _fan_legend_handles(drew_overlay: bool) -> list:
    """The fan's shared legend entries, in drawing order."""
    handles = [
        _line_handle(color=_CLOSE_COLOR, linewidth=1.0, label="close"),
        _patch_handle(facecolor=_CHRONOS_COLOR, alpha=0.25, label="Chronos-2 p10-p90"),
        _line_handle(color=_CHRONOS_COLOR, linewidth=1.3, label="Chronos-2 p50"),
    ]
    # The Kronos entry only appears when a dashed line was actually drawn somewhere.
    if drew_overlay:
        handles.append(_line_handle(color=_KRONOS_COLOR, linewidth=1.3, linestyle="--", label="Kronos p50"))
    handles.append(_line_handle(color=_AS_OF_COLOR, linewidth=0.8, linestyle=":", label="as_of"))
    return handles


def _draw_fan_panel(
    ax,
    symbol: str,
    history: pl.DataFrame | None,
    forecast: pl.DataFrame,
    overlay: pl.DataFrame | None,
    history_bars: int,
) -> bool:
    """Draw one symbol's fan on ``ax``; return whether an overlay line was drawn."""
    as_of_values = forecast.get_column("as_of").to_numpy()
    as_of = as_of_values.max()
    forecast = forecast.filter(pl.Series(as_of_values == as_of))
    fc_ts = forecast.get_column("ts").to_numpy()

    if history is not None and history.height > 0:
        _draw_closes(ax, history, as_of, fc_ts.max(), history_bars)
    else:
        logger.debug("No history for %s; its panel shows the forecast only", symbol)
    ax.fill_between(
        fc_ts,
        forecast.get_column("p10").to_numpy(),
        forecast.get_column("p90").to_numpy(),
        color=_CHRONOS_COLOR,
        alpha=0.25,
        linewidth=0,
    )
    ax.plot(fc_ts, forecast.get_column("p50").to_numpy(), color=_CHRONOS_COLOR, linewidth=1.3)
    drew_overlay = overlay is not None and _draw_overlay(ax, overlay, as_of)
    ax.axvline(as_of, color=_AS_OF_COLOR, linewidth=0.8, linestyle=":")
    _style_fan_panel(ax, symbol)
    return drew_overlay


def _draw_closes(ax, history: pl.DataFrame, as_of, last_ts, history_bars: int) -> None:
    """Plot the last ``history_bars`` closes at or before ``as_of`` and those after it up to ``last_ts``."""
    # Compared as numpy datetime64 so history and forecasts need not share a time unit.
    hist_ts = history.get_column("ts").to_numpy()
    close = history.get_column("close").to_numpy()
    before = np.flatnonzero(hist_ts <= as_of)[-history_bars:]
    after = np.flatnonzero((hist_ts > as_of) & (hist_ts <= last_ts))
    keep = np.concatenate([before, after])
    ax.plot(hist_ts[keep], close[keep], color=_CLOSE_COLOR, linewidth=1.0)


def _draw_overlay(ax, overlay: pl.DataFrame, as_of) -> bool:
    """Plot the overlay's p50 dashed, only rows from the same ``as_of`` when it has one; return whether any."""
    if "as_of" in overlay.columns:
        overlay = overlay.filter(pl.Series(overlay.get_column("as_of").to_numpy() == as_of))
    if overlay.height == 0:
        return False
    ax.plot(
        overlay.get_column("ts").to_numpy(),
        overlay.get_column("p50").to_numpy(),
        color=_KRONOS_COLOR,
        linewidth=1.3,
        linestyle="--",
    )
    return True


def _style_fan_panel(ax, symbol: str) -> None:
    """Title, small ticks, a light grid and readable price and date labels for one fan panel."""
    ax.set_title(symbol, fontsize=9)
    ax.tick_params(labelsize=7, length=2, pad=1)
    ax.margins(x=0.01)
    ax.grid(True, linewidth=0.3, alpha=0.6)
    # Prices run from ~1.08 (FX) to ~1e5 (crypto): plain labels, since an offset such as "+9.5e4"
    # in a small panel is easy to miss and makes every tick read wrong.
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    _concise_dates(ax, maxticks=4)
    ax.xaxis.get_offset_text().set_fontsize(6)


def _scores_figure(series: pl.DataFrame, metrics: list[str], colors: dict[str, str]) -> Figure:
    """Draw one panel per metric, stacked and sharing the time axis, one line per model."""
    width_in, height_in = SCORES_PANEL_SIZE_IN
    fig = _new_figure((width_in, len(metrics) * height_in + SCORES_HEADER_IN))
    _place_grid(fig, len(metrics), 1, header_in=SCORES_HEADER_IN, hspace=0.35, wspace=0.0)

    by_metric = series.sort("as_of").partition_by("metric", as_dict=True)
    first_ax = None
    for index, metric in enumerate(metrics):
        ax = fig.add_subplot(len(metrics), 1, index + 1, sharex=first_ax)
        if first_ax is None:
            first_ax = ax
        _draw_score_panel(ax, metric, by_metric[(metric,)], colors)
    return fig


def _draw_score_panel(ax, metric: str, rows: pl.DataFrame, colors: dict[str, str]) -> None:
    """Plot one metric's rows, a line per model, with its reference level dashed where it has one."""
    for (model,), model_rows in sorted(rows.partition_by("model_name", as_dict=True).items()):
        ax.plot(
            model_rows.get_column("as_of").to_numpy(),
            model_rows.get_column("value").to_numpy(),
            color=colors[model],
            linewidth=1.3,
            marker="." if model_rows.height < 40 else None,
            markersize=4,
        )
    level = reference_level(metric)
    if level is not None:
        ax.axhline(level, color=_AS_OF_COLOR, linewidth=0.9, linestyle="--")
    ax.set_title(metric, fontsize=9, loc="left")
    ax.grid(True, linewidth=0.3, alpha=0.6)
    ax.tick_params(labelsize=8)
    _concise_dates(ax, maxticks=8)


def _grid_shape(n_panels: int, ncols: int) -> tuple[int, int]:
    """Return ``(ncols, nrows)`` for ``n_panels`` panels in at most ``ncols`` columns."""
    if n_panels < 1:
        raise ValueError(f"need at least one panel, got {n_panels}")
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, got {ncols}")
    ncols_used = min(ncols, n_panels)
    return ncols_used, math.ceil(n_panels / ncols_used)


def _line_handle(**style):
    from matplotlib.lines import Line2D

    return Line2D([], [], **style)


def _patch_handle(**style):
    from matplotlib.patches import Patch

    return Patch(**style)


def _new_figure(size_in: tuple[float, float]) -> Figure:
    """Create a figure bound to an Agg canvas, outside pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size_in, dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    return fig


def _place_grid(fig: Figure, nrows: int, ncols: int, *, header_in: float, hspace: float, wspace: float) -> None:
    """Set fixed margins in inches, so panels keep their size whatever the grid.

    Fixed margins are used instead of constrained layout, which costs more than the drawing
    itself for a few dozen panels.
    """
    width_in, height_in = fig.get_size_inches()
    fig.subplots_adjust(
        left=0.6 / width_in,
        right=1 - 0.15 / width_in,
        bottom=0.35 / height_in,
        top=1 - (header_in + 0.05) / height_in,
        hspace=hspace,
        wspace=wspace,
    )


def _add_header(fig: Figure, title: str, handles: list, *, header_in: float) -> None:
    """Put the title and one shared legend in the band above the panels."""
    height_in = fig.get_size_inches()[1]
    if title:
        fig.suptitle(title, y=1 - 0.08 / height_in, va="top", fontsize=11)
    fig.legend(
        handles=handles,
        loc="center",
        bbox_to_anchor=(0.5, 1 - (header_in * 0.68) / height_in),
        ncol=len(handles),
        fontsize=8,
        frameon=False,
        handlelength=2.2,
    )


def _concise_dates(ax, *, maxticks: int) -> None:
    """Use few, short date tick labels (``Mar``, ``12``, ``14:00``) on the x axis."""
    from matplotlib import dates as mdates

    locator = mdates.AutoDateLocator(minticks=2, maxticks=maxticks)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _to_png(fig: Figure) -> bytes:
    """Encode the figure as PNG bytes at :data:`FIGURE_DPI`."""
    buffer = io.BytesIO()
    # No Software tag: identical figures then give identical bytes across matplotlib builds.
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI, metadata={"Software": None})
    return buffer.getvalue()


def _split_by_symbol(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Return the frame's rows grouped by ``symbol``, keeping their order."""
    return {key[0]: part for key, part in frame.partition_by("symbol", as_dict=True, maintain_order=True).items()}


def _require_columns(frame: pl.DataFrame, columns: tuple[str, ...], name: str) -> None:
    """Raise ``ValueError`` naming the columns ``frame`` lacks."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; it has {frame.columns}")
