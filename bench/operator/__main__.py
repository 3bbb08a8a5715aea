"""``python -m bench.operator [--sources N]``: the whole benchmark, one command."""

from __future__ import annotations

from bench.operator.run import main

raise SystemExit(main())
