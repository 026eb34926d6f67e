-- What the API verified of an uploaded object: its ETag at verification, and for a job's input
-- its size. Readers (the workers) fetch the object with If-Match on this ETag and at this size,
-- so a presigned PUT that is still valid cannot replace a verified key bundle or batch.
-- NULL on rows from before this migration (read by size only, as before).
ALTER TABLE key_sets ADD COLUMN object_etag text CHECK (length(object_etag) BETWEEN 1 AND 200);
ALTER TABLE jobs ADD COLUMN input_etag text CHECK (length(input_etag) BETWEEN 1 AND 200);
ALTER TABLE jobs ADD COLUMN input_bytes bigint CHECK (input_bytes >= 1);
