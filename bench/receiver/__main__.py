"""``python -m bench.receiver``: the whole benchmark, one command."""

from __future__ import annotations

from bench.receiver.run import main

raise SystemExit(main())
