-- Scores of every model's forecasts against realised closes: one row per cadence, model, instrument,
-- horizon step and number of quantile levels scored (3: p10/p50/p90; 1: a central forecast only).
-- The forecast_scores_<cadence> asset rewrites a cadence's rows in one transaction, so a re-run
-- replaces them. Losses are divided by the naive scale (mean absolute one-bar change before as_of):
-- see forecasting_pipeline/scoring.py.
CREATE TABLE IF NOT EXISTS forecast_scores (
    timeframe        TEXT             NOT NULL,
    model_name       TEXT             NOT NULL,
    symbol           TEXT             NOT NULL,
    step             INTEGER          NOT NULL,
    levels           SMALLINT         NOT NULL,
    n                BIGINT           NOT NULL,
    pinball_p10      DOUBLE PRECISION NULL,
    pinball_p50      DOUBLE PRECISION NOT NULL,
    pinball_p90      DOUBLE PRECISION NULL,
    mean_pinball     DOUBLE PRECISION NOT NULL,
    n_below_p10      BIGINT           NULL,
    n_above_p90      BIGINT           NULL,
    coverage_p10_p90 DOUBLE PRECISION NULL,
    below_p10_rate   DOUBLE PRECISION NULL,
    above_p90_rate   DOUBLE PRECISION NULL,
    scaled_mae       DOUBLE PRECISION NOT NULL,
    scaled_rw_mae    DOUBLE PRECISION NOT NULL,
    relative_mae     DOUBLE PRECISION NULL,
    first_as_of      TIMESTAMPTZ      NOT NULL,
    last_as_of       TIMESTAMPTZ      NOT NULL,
    scored_through   TIMESTAMPTZ      NOT NULL,
    scored_at        TIMESTAMPTZ      NOT NULL DEFAULT now(),
    PRIMARY KEY (timeframe, model_name, symbol, step, levels)
);
