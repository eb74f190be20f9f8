-- The table Kronos already fills, created only where it does not exist yet (fresh databases, tests).
-- Kronos stores one row per forecast; `predictions` is a JSON array of per-step objects {"ts", "close"}.
-- expects-if-exists: ml_predictions(symbol text, timeframe text, created_at timestamp with time zone, predictions jsonb)
CREATE TABLE IF NOT EXISTS ml_predictions (
    id          BIGSERIAL PRIMARY KEY,
    symbol      TEXT        NOT NULL,
    timeframe   TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    predictions JSONB       NOT NULL
);
