-- Optional least privilege for fine-tuning (apply with `forecasting-pipeline migrate --dir
-- migrations/optional`, after 20260801_ensemble_writer_rls.sql): members of `chronos_writer` may
-- now also insert and update ml_predictions rows whose model_name is 'chronos-2-challenger' (a
-- challenger's shadow forecasts), and read and write the checkpoint registry. They still cannot
-- delete rows, and cannot touch 'kronos-base' rows or any other model's.
-- expects: ml_predictions(symbol text, timeframe text, model_name text, as_of timestamp with time zone)
-- expects: chronos2_checkpoints(id bigint, timeframe text, status text)
-- expects: chronos2_registry_events(id bigint, timeframe text, action text)
GRANT SELECT, INSERT, UPDATE ON chronos2_checkpoints, chronos2_registry_events TO chronos_writer;
GRANT USAGE ON SEQUENCE chronos2_checkpoints_id_seq, chronos2_registry_events_id_seq TO chronos_writer;

DROP POLICY IF EXISTS chronos_writer_insert ON ml_predictions;
CREATE POLICY chronos_writer_insert ON ml_predictions FOR INSERT TO chronos_writer
    WITH CHECK (model_name IN ('chronos-2', 'ensemble', 'chronos-2-challenger'));

DROP POLICY IF EXISTS chronos_writer_update ON ml_predictions;
CREATE POLICY chronos_writer_update ON ml_predictions FOR UPDATE TO chronos_writer
    USING (model_name IN ('chronos-2', 'ensemble', 'chronos-2-challenger'))
    WITH CHECK (model_name IN ('chronos-2', 'ensemble', 'chronos-2-challenger'));
