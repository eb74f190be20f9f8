-- Which window's run wrote each of our rows, so that a re-run of a window leaves exactly its own set.
--
-- A window's run claims the rows it wrote: one row here per (model, cadence, window, instrument),
-- naming the forecast's as_of. A re-run of the window replaces the window's claims with its own and,
-- in the same transaction, deletes the rows of that model that no window claims any more: an
-- instrument the re-run left out (a corrected bar now fails validation) no longer has a row from
-- that window. Windows that end between two closes (a weekend's) share the as_of of the window
-- before, and so a row: it stays while any window's latest run claims it.
--
-- Only the pipeline's own models ('chronos-2', 'ensemble') are claimed here; Kronos's rows never are,
-- and the writer never deletes a row of any other model.
--
-- Rows written before this migration are claimed by the window their as_of closes: the daily window
-- of the UTC day, or the hourly window of the UTC hour, that ends at or just after as_of. (A window
-- whose forecasts read a stale bar, or a weekend window, makes its own claims on its next run.)
-- expects: ml_predictions(symbol text, timeframe text, model_name text, as_of timestamp with time zone)
CREATE TABLE IF NOT EXISTS ml_prediction_windows (
    model_name TEXT        NOT NULL,
    timeframe  TEXT        NOT NULL,
    window_key TEXT        NOT NULL,
    symbol     TEXT        NOT NULL,
    as_of      TIMESTAMPTZ NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, timeframe, window_key, symbol)
);
-- "Does any window still claim this row?"
CREATE INDEX IF NOT EXISTS idx_ml_prediction_windows_row ON ml_prediction_windows (model_name, timeframe, symbol, as_of);

INSERT INTO ml_prediction_windows (model_name, timeframe, window_key, symbol, as_of)
SELECT model_name, timeframe,
       to_char((as_of - interval '1 microsecond') AT TIME ZONE 'UTC',
               CASE timeframe WHEN '1h' THEN 'YYYY-MM-DD-HH24:00' ELSE 'YYYY-MM-DD' END),
       symbol, as_of
FROM ml_predictions
WHERE model_name IN ('chronos-2', 'ensemble') AND timeframe IN ('1h', '1d') AND as_of IS NOT NULL
ON CONFLICT DO NOTHING;
