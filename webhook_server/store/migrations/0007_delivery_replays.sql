-- Replays (webhook_server.store.events): a delivery sent again on request (the Events API, `dfm
-- events replay`) goes back to pending with a fresh attempt budget, and its age for
-- forward.maxAgeSeconds counts from when it was re-queued, not from when its event was received
-- (else a replay of anything older than maxAge would be dead-lettered again before an attempt).
-- Its webhook_id is kept: the consumer sees the same webhook-id as the first time.
ALTER TABLE webhook_deliveries ADD COLUMN requeued_at timestamptz;
ALTER TABLE webhook_deliveries ADD COLUMN replays integer NOT NULL DEFAULT 0;
