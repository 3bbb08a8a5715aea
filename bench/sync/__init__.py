"""bench/sync: items per second into the event store, beside raw COPY and INSERT rates."""
