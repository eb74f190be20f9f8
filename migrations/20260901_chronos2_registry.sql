-- The registry of fine-tuned Chronos-2 checkpoints (forecasting_pipeline/storage/model_registry.py)
-- and the log of what was done with them.
--
-- chronos2_checkpoints: one row per checkpoint a fine-tuning run stored, per cadence (timeframe).
-- Its weights live in a folder of safetensors (path), named by the sha256 of its weight files
-- (content_hash); model_version is exactly what rows forecast with it record. status is
-- 'challenger' (shadows the champion), 'champion' (serves) or 'retired'. At most one of each of the
-- first two per cadence; with no champion the configured model (CHRONOS2_MODEL) serves.
--
-- chronos2_registry_events: every registration, promotion, rollback and retirement, with the
-- champion before and after (NULL: the configured model) and the evidence of the promotion test.
CREATE TABLE IF NOT EXISTS chronos2_checkpoints (
    id               BIGSERIAL        PRIMARY KEY,
    timeframe        TEXT             NOT NULL CHECK (timeframe IN ('1h', '1d')),
    content_hash     TEXT             NOT NULL,
    model_version    TEXT             NOT NULL,
    path             TEXT             NOT NULL,
    base_model       TEXT             NOT NULL,
    base_revision    TEXT             NOT NULL,
    base_version     TEXT             NOT NULL,
    finetune_mode    TEXT             NOT NULL CHECK (finetune_mode IN ('lora', 'full')),
    -- Bars closed in [training_from, training_to) were read; the last validation_bars of each
    -- instrument were held out as the validation split.
    training_from    TIMESTAMPTZ      NOT NULL,
    training_to      TIMESTAMPTZ      NOT NULL,
    validation_bars  INTEGER          NOT NULL,
    instruments      TEXT[]           NOT NULL,
    steps            INTEGER          NOT NULL,
    learning_rate    DOUBLE PRECISION NOT NULL,
    batch_size       INTEGER          NOT NULL,
    context_length   INTEGER          NOT NULL,
    horizon          INTEGER          NOT NULL,
    seed             BIGINT           NOT NULL,
    validation_loss  DOUBLE PRECISION NULL,
    device           TEXT             NOT NULL,
    train_seconds    DOUBLE PRECISION NOT NULL,
    status           TEXT             NOT NULL CHECK (status IN ('challenger', 'champion', 'retired')),
    created_at       TIMESTAMPTZ      NOT NULL DEFAULT now(),
    UNIQUE (timeframe, content_hash)
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_chronos2_one_champion ON chronos2_checkpoints (timeframe)
    WHERE status = 'champion';
CREATE UNIQUE INDEX IF NOT EXISTS idx_chronos2_one_challenger ON chronos2_checkpoints (timeframe)
    WHERE status = 'challenger';

CREATE TABLE IF NOT EXISTS chronos2_registry_events (
    id                  BIGSERIAL   PRIMARY KEY,
    timeframe           TEXT        NOT NULL CHECK (timeframe IN ('1h', '1d')),
    action              TEXT        NOT NULL CHECK (action IN ('register', 'promote', 'rollback', 'retire')),
    checkpoint_id       BIGINT      NULL REFERENCES chronos2_checkpoints (id),
    champion_before     BIGINT      NULL REFERENCES chronos2_checkpoints (id),
    champion_after      BIGINT      NULL REFERENCES chronos2_checkpoints (id),
    forced              BOOLEAN     NOT NULL DEFAULT false,
    reason              TEXT        NOT NULL DEFAULT '',
    evidence            JSONB       NOT NULL DEFAULT '{}'::jsonb,
    actor               TEXT        NOT NULL DEFAULT current_user,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_chronos2_registry_events ON chronos2_registry_events (timeframe, id);
