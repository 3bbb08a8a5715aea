"""bench/backup: `dfm backup run` and `dfm backup restore` beside a plain pg_dump/pg_restore."""
