-- Signed one-time values that must not be used twice (Mailgun signs a token and a timestamp, not
-- the body): the first event to use a key owns it until expires_at (its timestamp plus the
-- source's tolerance, past which the signature is refused anyway). Claimed in the transaction
-- that stores the event, so a key is never held by an event that was not stored; shared by every
-- replica. Expired keys are deleted by partition maintenance.
CREATE TABLE webhook_replay_keys (
    source     text        NOT NULL,
    replay_key text        NOT NULL,
    subject    text        NOT NULL DEFAULT '',
    event_id   text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (source, replay_key)
);

CREATE INDEX webhook_replay_keys_expires_at ON webhook_replay_keys (expires_at);

-- How many provider events one stored body holds: SendGrid and Mandrill post batches, which are
-- stored once, as signed; 1 for everything else.
ALTER TABLE webhook_events ADD COLUMN event_count integer NOT NULL DEFAULT 1;
