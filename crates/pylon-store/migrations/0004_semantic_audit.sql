-- What a semantic cache hit matched, so a wrong hit can be reported, evicted and blocked.
ALTER TABLE requests ADD COLUMN cache_similarity DOUBLE PRECISION;
ALTER TABLE requests ADD COLUMN cache_matched TEXT;
ALTER TABLE requests ADD COLUMN cache_entry TEXT;
ALTER TABLE requests ADD COLUMN cache_question TEXT;
-- Only semantic hits are looked up by id (feedback): index just those rows.
CREATE INDEX requests_semantic ON requests (request_id) WHERE cache_entry IS NOT NULL;
