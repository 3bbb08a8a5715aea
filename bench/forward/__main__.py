"""``python -m bench.forward``: the whole benchmark, one command."""

from __future__ import annotations

from bench.forward.run import main

raise SystemExit(main())
