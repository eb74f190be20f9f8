-- The ensemble's explanation of each of its forecasts (forecasting_pipeline/ensemble/): the weights
-- given to every member, the members left out of it and why, and the numbers behind the weights
-- and the calibrated band. One row per ensemble row of ml_predictions (model_name 'ensemble'),
-- under the same (symbol, timeframe, as_of), written in the same transaction.
--
-- weights:  {"<member>": {"location": w, "band": v or null}} for the members used; they sum to 1
--           each (band: over the members with a band).
-- missing:  {"<member>": "why it is not in this forecast"}; {} when every member is.
-- details:  scored forecasts behind the weights, warm-up, the own weights' share, own and pooled
--           weights, each member's recent scaled losses, the calibration factors.
-- expects: ml_predictions(symbol text, timeframe text, model_name text, as_of timestamp with time zone)
CREATE TABLE IF NOT EXISTS ensemble_weights (
    timeframe     TEXT        NOT NULL,
    symbol        TEXT        NOT NULL,
    as_of         TIMESTAMPTZ NOT NULL,
    model_version TEXT        NOT NULL,
    weights       JSONB       NOT NULL,
    missing       JSONB       NOT NULL DEFAULT '{}'::jsonb,
    details       JSONB       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (timeframe, symbol, as_of)
);
