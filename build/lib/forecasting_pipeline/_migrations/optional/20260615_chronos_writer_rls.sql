-- Optional least privilege (apply with `forecasting-pipeline migrate --dir migrations/optional`):
-- a role `chronos_writer` that may read ml_predictions and insert or update only rows whose
-- model_name is 'chronos-2'. It cannot delete, and it cannot touch 'kronos-base' rows.
--
-- The role is NOLOGIN: grant it to the login role the pipeline connects as, e.g.
--   CREATE ROLE chronos_pipeline LOGIN PASSWORD '...' IN ROLE chronos_writer;
-- Roles are cluster-wide, so creating it is idempotent (several databases, re-runs, races).
-- Creating a role needs CREATEROLE; that is why this migration is not in the default sequence.
--
-- Row-level security never applies to the table owner (no FORCE) or superusers. Every other
-- role (Kronos's writer, the gateway) keeps exactly the rights its GRANTs give it through the
-- permissive policy `ml_predictions_other_roles`; RLS narrows only members of chronos_writer.
-- expects: ml_predictions(symbol text, timeframe text, model_name text, model_version text, as_of timestamp with time zone, predictions jsonb)
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chronos_writer') THEN
        CREATE ROLE chronos_writer NOLOGIN;
    END IF;
EXCEPTION
    -- Another database's migration created it between the check and the CREATE.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

GRANT SELECT, INSERT, UPDATE ON ml_predictions TO chronos_writer;
GRANT USAGE ON SEQUENCE ml_predictions_id_seq TO chronos_writer;

ALTER TABLE ml_predictions ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS ml_predictions_other_roles ON ml_predictions;
CREATE POLICY ml_predictions_other_roles ON ml_predictions AS PERMISSIVE FOR ALL TO PUBLIC
    USING (NOT pg_has_role(current_user, 'chronos_writer', 'MEMBER'))
    WITH CHECK (NOT pg_has_role(current_user, 'chronos_writer', 'MEMBER'));

DROP POLICY IF EXISTS chronos_writer_read ON ml_predictions;
CREATE POLICY chronos_writer_read ON ml_predictions FOR SELECT TO chronos_writer USING (true);

DROP POLICY IF EXISTS chronos_writer_insert ON ml_predictions;
CREATE POLICY chronos_writer_insert ON ml_predictions FOR INSERT TO chronos_writer
    WITH CHECK (model_name = 'chronos-2');

DROP POLICY IF EXISTS chronos_writer_update ON ml_predictions;
CREATE POLICY chronos_writer_update ON ml_predictions FOR UPDATE TO chronos_writer
    USING (model_name = 'chronos-2') WITH CHECK (model_name = 'chronos-2');
