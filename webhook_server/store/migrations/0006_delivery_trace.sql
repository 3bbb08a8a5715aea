-- The trace context a delivery continues (W3C traceparent of the span that stored its event), so
-- that a forward attempt is the child of that span whichever replica claims the row. NULL when
-- the event was stored with tracing off: the forwarder then continues the provider's own
-- traceparent, as stored with the event's headers. A nullable column: no table rewrite.
ALTER TABLE webhook_deliveries ADD COLUMN trace_parent text;
