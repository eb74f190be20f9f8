-- The forecast's natural key: a re-run of a window replaces its rows instead of duplicating them.
-- as_of is the close time of the last bar the forecast used. Existing Kronos rows keep as_of NULL,
-- and NULLs never collide in a unique index, so this is safe on a table full of them.
-- expects: ml_predictions(symbol text, timeframe text, created_at timestamp with time zone, predictions jsonb, model_name text, model_version text)
ALTER TABLE ml_predictions ADD COLUMN IF NOT EXISTS as_of TIMESTAMPTZ NULL;
CREATE UNIQUE INDEX IF NOT EXISTS uq_ml_pred_forecast ON ml_predictions(symbol, timeframe, model_name, as_of);
