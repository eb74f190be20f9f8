-- Finding the rows not scored yet compares (id, created_at) of every row of a timeframe with the
-- forecast_losses ledger; this index lets PostgreSQL do that without reading the forecasts themselves.
-- Built concurrently, outside a transaction, so that Kronos's inserts go on meanwhile. (It was first
-- part of 20260701_forecast_losses.sql; where that file has built it, this finds it and does nothing.)
-- transaction: none
-- expects: ml_predictions(id bigint, timeframe text, created_at timestamp with time zone)
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_ml_pred_scoring ON ml_predictions (timeframe, id, created_at);
