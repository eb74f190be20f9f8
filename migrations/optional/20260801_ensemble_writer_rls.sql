-- Optional least privilege for the ensemble (apply with `forecasting-pipeline migrate --dir
-- migrations/optional`, after 20260615_chronos_writer_rls.sql, which creates the role and turns
-- row-level security on): members of `chronos_writer` may now insert and update ml_predictions
-- rows whose model_name is 'chronos-2' or 'ensemble', and write the ensemble's weights. They still
-- cannot delete, and cannot touch 'kronos-base' rows or any other model's.
-- expects: ml_predictions(symbol text, timeframe text, model_name text, as_of timestamp with time zone)
-- expects: ensemble_weights(timeframe text, symbol text, as_of timestamp with time zone, weights jsonb)
GRANT SELECT, INSERT, UPDATE ON ensemble_weights TO chronos_writer;

DROP POLICY IF EXISTS chronos_writer_insert ON ml_predictions;
CREATE POLICY chronos_writer_insert ON ml_predictions FOR INSERT TO chronos_writer
    WITH CHECK (model_name IN ('chronos-2', 'ensemble'));

DROP POLICY IF EXISTS chronos_writer_update ON ml_predictions;
CREATE POLICY chronos_writer_update ON ml_predictions FOR UPDATE TO chronos_writer
    USING (model_name IN ('chronos-2', 'ensemble')) WITH CHECK (model_name IN ('chronos-2', 'ensemble'));
