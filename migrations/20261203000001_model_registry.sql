-- The model registry: models registered as data (an ONNX file and its manifest in the bucket
-- under models/NAME/VERSION/), and the version every key set and job is pinned to.
--
-- States: uploading (announced, files not yet verified; never served), active (served; a bare
-- NAME means its highest active version), retired (no new key sets or jobs; queued and running
-- jobs still finish). A (name, version) is never reused: versions are immutable.
CREATE TABLE models (
    name          text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    version       integer NOT NULL CHECK (version >= 1),
    state         text NOT NULL DEFAULT 'uploading' CHECK (state IN ('uploading', 'active', 'retired')),
    -- What the announcement promised: the ONNX file's SHA-256 and both files' sizes.
    onnx_sha256   bytea NOT NULL CHECK (octet_length(onnx_sha256) = 32),
    onnx_bytes    bigint NOT NULL CHECK (onnx_bytes >= 1),
    manifest_bytes bigint NOT NULL CHECK (manifest_bytes >= 1),
    -- Set when the files were verified and the model compiled (state active or retired).
    manifest      jsonb,
    -- The compiled plans' summaries, one per packing, each with its parameter fingerprint.
    plans         jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    activated_at  timestamptz,
    retired_at    timestamptz,
    PRIMARY KEY (name, version),
    CONSTRAINT models_served_are_compiled
        CHECK (state = 'uploading' OR (manifest IS NOT NULL AND plans IS NOT NULL AND activated_at IS NOT NULL)),
    CONSTRAINT models_retired_iff_retired_at CHECK ((state = 'retired') = (retired_at IS NOT NULL))
);
CREATE INDEX models_active ON models (name, version DESC) WHERE state = 'active';

-- The model version each key set, announced upload and job is pinned to (NULL: rows from before
-- the registry, which name a model built into the binary).
ALTER TABLE key_sets ADD COLUMN model_version integer CHECK (model_version >= 1);
ALTER TABLE pending_uploads ADD COLUMN model_version integer CHECK (model_version >= 1);
ALTER TABLE jobs ADD COLUMN model_version integer CHECK (model_version >= 1);
