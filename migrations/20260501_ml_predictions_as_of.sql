-- The forecast's natural key: a re-run of a window replaces its rows instead of duplicating them.
-- as_of is the close time of the last bar the forecast used. Existing Kronos rows keep as_of NULL,
-- and NULLs never collide in a unique index, so this is safe on a table full of them.
-- Built concurrently, outside a transaction, so that Kronos's inserts go on meanwhile (it was first
-- written with a plain build).
-- transaction: none
-- previous-checksum: 0dd1a9ed0e7c3645748204f24569c66635d1a4ad76667718e6fd45fab7147237
-- expects: ml_predictions(symbol text, timeframe text, created_at timestamp with time zone, predictions jsonb, model_name text, model_version text)
ALTER TABLE ml_predictions ADD COLUMN IF NOT EXISTS as_of TIMESTAMPTZ NULL;
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_ml_pred_forecast ON ml_predictions(symbol, timeframe, model_name, as_of);
