-- The originally planned change: a second model beside Kronos, whose rows keep the default.
-- Kronos inserts while this runs: the index is built concurrently, so the file runs outside a
-- transaction, every statement safe to run again (it was first written with a plain build).
-- transaction: none
-- previous-checksum: 75966bd4186d88c7753bf3210d0943af6673a9fb0470271c2268b052ed73b2f1
-- expects: ml_predictions(symbol text, timeframe text, created_at timestamp with time zone, predictions jsonb)
ALTER TABLE ml_predictions ADD COLUMN IF NOT EXISTS model_name TEXT NOT NULL DEFAULT 'kronos-base';
ALTER TABLE ml_predictions ADD COLUMN IF NOT EXISTS model_version TEXT NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_ml_pred_symbol_model_ts ON ml_predictions(symbol, model_name, created_at DESC);
