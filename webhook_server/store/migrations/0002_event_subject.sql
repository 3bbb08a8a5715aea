-- jwt sources: the event id is chosen by the caller (Idempotency-Key, or the body's id), so two
-- callers may pick the same one. Dedup is scoped by the token's subject, which is stored with the
-- event. Every other source has subject '' (its ids are the provider's own).
ALTER TABLE webhook_event_ids ADD COLUMN subject text NOT NULL DEFAULT '';
ALTER TABLE webhook_event_ids DROP CONSTRAINT webhook_event_ids_pkey,
    ADD PRIMARY KEY (source, subject, event_id);

ALTER TABLE webhook_events ADD COLUMN subject text NOT NULL DEFAULT '';
ALTER TABLE webhook_events DROP CONSTRAINT webhook_events_pkey,
    ADD PRIMARY KEY (source, subject, event_id, received_at);
