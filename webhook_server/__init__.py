"""df-middleware data plane: webhook receivers that verify, dedupe and durably store events."""
