"""The README's provider table and docs/receiver.md's provider sections, generated from the
provider registry (``webhook_server.verify.registry``).

``python -m dfm.provider_docs README.md docs/receiver.md`` (part of ``make generate``) rewrites
the text between the markers; ``--check`` only says whether it would change anything (a test does
the same and fails when the documents drift from the registry).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from webhook_server.verify.registry import PROVIDERS

TABLE_BEGIN = "<!-- provider-table: generated from webhook_server/verify/registry.py -->"
TABLE_END = "<!-- provider-table end -->"
SECTIONS_BEGIN = "<!-- provider-sections: generated from webhook_server/verify/registry.py -->"
SECTIONS_END = "<!-- provider-sections end -->"


def table() -> str:
    rows = [
        "| `spec.provider` | checks | event id | event type |",
        "| --- | --- | --- | --- |",
    ]
    for provider, spec in PROVIDERS.items():
        rows.append(f"| `{provider.value}` | {spec.checks} | {spec.event_id} | {spec.event_type} |")
    return "\n".join(rows) + "\n"


def sections() -> str:
    return "\n".join(spec.docs for spec in PROVIDERS.values() if spec.docs)


def replace_between(text: str, begin: str, end: str, content: str, where: str) -> str:
    """``text`` with what lies between the ``begin`` and ``end`` marker lines replaced."""
    head, found, rest = text.partition(begin + "\n")
    if not found:
        raise ValueError(f"{where}: marker {begin!r} not found")
    _, found, tail = rest.partition(end)
    if not found:
        raise ValueError(f"{where}: marker {end!r} not found")
    return f"{head}{begin}\n{content}{end}{tail}"


def render_readme(text: str, where: str = "README.md") -> str:
    return replace_between(text, TABLE_BEGIN, TABLE_END, table(), where)


def render_receiver_docs(text: str, where: str = "docs/receiver.md") -> str:
    return replace_between(text, SECTIONS_BEGIN, SECTIONS_END, sections(), where)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dfm.provider_docs", description=__doc__)
    parser.add_argument("readme", type=Path)
    parser.add_argument("receiver_docs", type=Path)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on drift")
    args = parser.parse_args(argv)
    stale = []
    for path, render in ((args.readme, render_readme), (args.receiver_docs, render_receiver_docs)):
        text = path.read_text()
        fresh = render(text, str(path))
        if fresh != text:
            stale.append(str(path))
            if not args.check:
                path.write_text(fresh)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (run make generate)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
