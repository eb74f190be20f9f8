-- The gateway's read path: the latest forecast per symbol and timeframe of one model, as a
-- Supabase-style RPC (PostgREST exposes it as POST /rpc/latest_ml_predictions). The model
-- defaults to 'kronos-base', so a caller that passes no model reads what it read before.
--
-- "Latest" is the forecast's origin: as_of (close of the last bar used) where a row has one,
-- else created_at. Kronos rows have as_of NULL, so they order by when they were written. A
-- re-run of an old Chronos-2 window gets a new created_at but keeps its old as_of, so it never
-- displaces the newest window; NULLS LAST on as_of would instead rank any row with an as_of
-- above every newer row without one. created_at breaks ties (a re-written row wins).
--
-- The index is built concurrently, outside a transaction, so that Kronos's inserts go on meanwhile
-- (the file was first written with a plain build); the function is replaced idempotently.
-- transaction: none
-- previous-checksum: 71d30d7487a68dd652754d4c69a9bd9daefce8920439a6d16a6d65976702fa09
--
-- expects: ml_predictions(symbol text, timeframe text, model_name text, model_version text, as_of timestamp with time zone, created_at timestamp with time zone, predictions jsonb)

-- Leading model_name, timeframe, symbol: the function walks the distinct (timeframe, symbol) pairs of a
-- model by skipping through this index, then reads the first entry of each pair in origin order.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_ml_pred_latest
    ON ml_predictions (model_name, timeframe, symbol, (COALESCE(as_of, created_at)) DESC, created_at DESC);

-- LANGUAGE sql, STABLE and a single SELECT: the planner inlines the call, folds the NULL filters away,
-- and the index serves it (PostgreSQL has no skip scan before 18, hence the recursive CTE).
CREATE OR REPLACE FUNCTION latest_ml_predictions(
    p_model     TEXT DEFAULT 'kronos-base',
    p_timeframe TEXT DEFAULT NULL,
    p_symbol    TEXT DEFAULT NULL
)
RETURNS TABLE (
    symbol        TEXT,
    timeframe     TEXT,
    model_name    TEXT,
    model_version TEXT,
    as_of         TIMESTAMPTZ,
    created_at    TIMESTAMPTZ,
    predictions   JSONB
)
LANGUAGE sql
STABLE
AS $$
    WITH RECURSIVE series (timeframe, symbol) AS (
        (SELECT m.timeframe, m.symbol
           FROM ml_predictions m
          WHERE m.model_name = p_model
            AND (p_timeframe IS NULL OR m.timeframe = p_timeframe)
            AND (p_symbol IS NULL OR m.symbol = p_symbol)
          ORDER BY m.timeframe, m.symbol
          LIMIT 1)
        UNION ALL
        SELECT nxt.timeframe, nxt.symbol
          FROM series s
          CROSS JOIN LATERAL (
              SELECT m.timeframe, m.symbol
                FROM ml_predictions m
               WHERE m.model_name = p_model
                 -- Two spellings of "the next pair", so that each is one index range once the
                 -- planner has folded the constant p_timeframe: a row comparison over both
                 -- columns, or, within one timeframe, the next symbol.
                 AND ((p_timeframe IS NULL AND (m.timeframe, m.symbol) > (s.timeframe, s.symbol))
                      OR (p_timeframe IS NOT NULL AND m.timeframe = p_timeframe AND m.symbol > s.symbol))
                 AND (p_symbol IS NULL OR m.symbol = p_symbol)
               ORDER BY m.timeframe, m.symbol
               LIMIT 1
          ) nxt
    )
    SELECT latest.symbol, latest.timeframe, latest.model_name, latest.model_version,
           latest.as_of, latest.created_at, latest.predictions
      FROM series s
      CROSS JOIN LATERAL (
          SELECT m.symbol, m.timeframe, m.model_name, m.model_version, m.as_of, m.created_at, m.predictions
            FROM ml_predictions m
           WHERE m.model_name = p_model AND m.timeframe = s.timeframe AND m.symbol = s.symbol
           ORDER BY COALESCE(m.as_of, m.created_at) DESC, m.created_at DESC
           LIMIT 1
      ) latest
     ORDER BY latest.timeframe, latest.symbol
$$;

COMMENT ON FUNCTION latest_ml_predictions(TEXT, TEXT, TEXT) IS
    'Latest forecast per (symbol, timeframe) of one model (default kronos-base), by COALESCE(as_of, created_at) then created_at.';
