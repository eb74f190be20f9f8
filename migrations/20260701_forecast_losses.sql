-- Incremental scoring: each forecast is scored once, when its whole horizon has closed, and added
-- to the scores instead of every run rescoring all history (forecasting_pipeline/scoring/evaluation.py).
--
-- forecast_scores keeps its columns (means and rates, read by dashboards) and gains the additive
-- sums they are derived from, so that new forecasts add to a row. Rows written before this
-- migration get sums that reproduce their means; the first scoring run of each cadence after it
-- finds no forecast_scoring_state row and rebuilds that cadence's scores from scratch anyway.
--
-- forecast_losses holds one row per scored forecast (models and the two baselines): its
-- losses averaged over the horizon, and for model rows the ml_predictions row it came from
-- (id and created_at), which is how a run knows what it has scored and notices a row rewritten
-- or deleted since. forecast_scoring_skips records rows examined and left unscored for good
-- (with the reason), so later runs do not read them again.
--
-- previous-checksum: b63dd7f656255b251889e7f07da40030babe3d076d5b52b5a30977914f60971e
-- expects: forecast_scores(timeframe text, model_name text, symbol text, step integer, levels smallint, n bigint, pinball_p10 double precision, pinball_p50 double precision, pinball_p90 double precision, mean_pinball double precision, n_below_p10 bigint, n_above_p90 bigint, scaled_mae double precision, scaled_rw_mae double precision, first_as_of timestamp with time zone, last_as_of timestamp with time zone)
-- expects: ml_predictions(id bigint, timeframe text, created_at timestamp with time zone, symbol text, model_name text, as_of timestamp with time zone)
ALTER TABLE forecast_scores
    ADD COLUMN IF NOT EXISTS sum_pinball_p10         DOUBLE PRECISION NULL,
    ADD COLUMN IF NOT EXISTS sum_pinball_p50         DOUBLE PRECISION NULL,
    ADD COLUMN IF NOT EXISTS sum_pinball_p90         DOUBLE PRECISION NULL,
    ADD COLUMN IF NOT EXISTS sum_mean_pinball        DOUBLE PRECISION NULL,
    ADD COLUMN IF NOT EXISTS sum_scaled_abs_error    DOUBLE PRECISION NULL,
    ADD COLUMN IF NOT EXISTS sum_scaled_rw_abs_error DOUBLE PRECISION NULL;
UPDATE forecast_scores
SET sum_pinball_p10 = pinball_p10 * n, sum_pinball_p50 = pinball_p50 * n, sum_pinball_p90 = pinball_p90 * n,
    sum_mean_pinball = mean_pinball * n, sum_scaled_abs_error = scaled_mae * n,
    sum_scaled_rw_abs_error = scaled_rw_mae * n;
ALTER TABLE forecast_scores
    ALTER COLUMN sum_pinball_p50 SET NOT NULL,
    ALTER COLUMN sum_mean_pinball SET NOT NULL,
    ALTER COLUMN sum_scaled_abs_error SET NOT NULL,
    ALTER COLUMN sum_scaled_rw_abs_error SET NOT NULL;

CREATE TABLE IF NOT EXISTS forecast_losses (
    timeframe             TEXT             NOT NULL,
    model_name            TEXT             NOT NULL,
    symbol                TEXT             NOT NULL,
    as_of                 TIMESTAMPTZ      NOT NULL,
    levels                SMALLINT         NOT NULL,
    -- Close of the last step: the instant the whole horizon was realised.
    realised_at           TIMESTAMPTZ      NOT NULL,
    n_steps               INTEGER          NOT NULL,
    -- Means over the steps, divided by the naive scale at as_of.
    mean_pinball          DOUBLE PRECISION NOT NULL,
    scaled_abs_error      DOUBLE PRECISION NOT NULL,
    scaled_rw_abs_error   DOUBLE PRECISION NOT NULL,
    n_below_p10           INTEGER          NULL,
    n_above_p90           INTEGER          NULL,
    -- The ml_predictions row scored; NULL for the baselines, which no row holds.
    prediction_id         BIGINT           NULL,
    prediction_created_at TIMESTAMPTZ      NULL,
    scored_at             TIMESTAMPTZ      NOT NULL DEFAULT now(),
    PRIMARY KEY (timeframe, model_name, symbol, as_of, levels)
);
-- Point-in-time reads: a model's losses realised by an instant.
CREATE INDEX IF NOT EXISTS idx_forecast_losses_realised ON forecast_losses (timeframe, model_name, realised_at);
-- Recent rows for the rolling chart and the canaries.
CREATE INDEX IF NOT EXISTS idx_forecast_losses_as_of ON forecast_losses (timeframe, as_of);
CREATE INDEX IF NOT EXISTS idx_forecast_losses_row ON forecast_losses (prediction_id, prediction_created_at)
    WHERE prediction_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS forecast_scoring_skips (
    prediction_id         BIGINT      PRIMARY KEY,
    prediction_created_at TIMESTAMPTZ NOT NULL,
    timeframe             TEXT        NOT NULL,
    model_name            TEXT        NOT NULL,
    symbol                TEXT        NOT NULL,
    as_of                 TIMESTAMPTZ NULL,
    reason                TEXT        NOT NULL,
    skipped_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_forecast_scoring_skips_timeframe ON forecast_scoring_skips (timeframe, symbol);

-- One row per cadence whose scores are maintained incrementally; its absence means "rebuild".
CREATE TABLE IF NOT EXISTS forecast_scoring_state (
    timeframe      TEXT        PRIMARY KEY,
    scored_through TIMESTAMPTZ NOT NULL,
    vol_window     INTEGER     NOT NULL,
    method_version INTEGER     NOT NULL,
    rebuilt_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The index on ml_predictions that scoring needs is built concurrently by 20260702_ml_predictions_scoring_index.sql.
