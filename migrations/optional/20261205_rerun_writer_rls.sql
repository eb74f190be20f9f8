-- Optional least privilege for re-runs (apply with `forecasting-pipeline migrate --dir migrations/optional`,
-- after the other optional writer files): a window's re-run leaves exactly its own set, so it deletes
-- the rows of its window that it no longer makes. Members of `chronos_writer` may now delete
-- ml_predictions rows whose model_name is 'chronos-2', 'ensemble' or 'chronos-2-challenger' (never
-- 'kronos-base' or any other model's: row-level security hides those from the delete), the weights of
-- ensemble rows, and keep the windows' claims in ml_prediction_windows.
-- expects: ml_predictions(symbol text, timeframe text, model_name text, as_of timestamp with time zone)
-- expects: ml_prediction_windows(model_name text, timeframe text, window_key text, symbol text, as_of timestamp with time zone)
-- expects: ensemble_weights(timeframe text, symbol text, as_of timestamp with time zone)
GRANT DELETE ON ml_predictions TO chronos_writer;
GRANT DELETE ON ensemble_weights TO chronos_writer;
GRANT SELECT, INSERT, DELETE ON ml_prediction_windows TO chronos_writer;

DROP POLICY IF EXISTS chronos_writer_delete ON ml_predictions;
CREATE POLICY chronos_writer_delete ON ml_predictions FOR DELETE TO chronos_writer
    USING (model_name IN ('chronos-2', 'ensemble', 'chronos-2-challenger'));
