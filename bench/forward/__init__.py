"""bench/forward: provider -> receiver -> consumer; ingest with forwarding on vs off."""
