"""``python -m bench.sync``: the whole benchmark, one command."""

from __future__ import annotations

from bench.sync.run import main

raise SystemExit(main())
