-- The originally planned change: a second model beside Kronos, whose rows keep the default.
-- expects: ml_predictions(symbol text, timeframe text, created_at timestamp with time zone, predictions jsonb)
ALTER TABLE ml_predictions ADD COLUMN IF NOT EXISTS model_name TEXT NOT NULL DEFAULT 'kronos-base';
ALTER TABLE ml_predictions ADD COLUMN IF NOT EXISTS model_version TEXT NULL;
CREATE INDEX IF NOT EXISTS idx_ml_pred_symbol_model_ts ON ml_predictions(symbol, model_name, created_at DESC);
