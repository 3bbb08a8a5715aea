"""`dfm events list|show|replay` as a person runs it: a subprocess against a real PostgreSQL,
beside a real receiver that stores and forwards (and delivers what the command re-queues)."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import asyncpg

from tests.integration.test_events_api import (
    READ,
    Tokens,
    bearer,
    jwks_url,  # noqa: F401 - a fixture
    rsa_key,  # noqa: F401 - a fixture
    send,
    source,
    tokens,  # noqa: F401 - a fixture
)
from tests.receivers import ClientFactory, Consumer, until_true

DFM = [sys.executable, "-m", "dfm.cli"]


async def dfm(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DFM_DATABASE_URL"}
    proc = await asyncio.create_subprocess_exec(
        *DFM,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_list_and_show_for_people_and_scripts(
    make_receiver: ClientFactory,
    database_url: str,
    jwks_url: str,  # noqa: F811
    tokens: Tokens,  # noqa: F811
) -> None:
    client = await make_receiver(source(jwks_url))
    for n in range(3):
        await send(client, f"cli-{n}")
    url = ["--database-url", database_url]

    code, out, err = await dfm("events", "list", *url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["SOURCE", "EVENT", "ID", "TYPE", "DELIVERY", "ATTEMPTS", "AGE"]
    assert [line.split()[1] for line in lines[1:]] == ["cli-2", "cli-1", "cli-0"]
    assert all(line.split()[3] == "-" for line in lines[1:])  # no forward, no delivery

    # -o json is the Events API's own answer, item for item.
    code, out, err = await dfm("events", "list", *url, "-o", "json")
    assert code == 0, err
    api = await client.get("/events", headers=bearer(tokens.make(READ)))
    assert json.loads(out) == await api.json()

    code, out, _ = await dfm("events", "list", *url, "-o", "wide", "--limit", "2")
    assert code == 0
    assert "WEBHOOK ID" in out.splitlines()[0]
    assert len(out.splitlines()) == 3
    code, out, err = await dfm("events", "list", *url, "--limit", "2")
    assert "(more: --cursor " in err
    cursor = err.split("--cursor ")[1].split(")")[0]
    code, out, _ = await dfm("events", "list", *url, "--limit", "2", "--cursor", cursor)
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["cli-0"]

    code, out, err = await dfm("events", "list", *url, "--since", "1h", "--type", "issues")
    assert code == 0
    assert out == ""
    assert "No events found." in err

    # show: by the provider's id; the payload only when asked for.
    code, out, err = await dfm("events", "show", *url, "cli-1")
    assert code == 0, err
    assert "Event ID:" in out
    assert "cli-1" in out
    assert "ada@example.com" not in out
    code, out, _ = await dfm("events", "show", *url, "cli-1", "--payload")
    assert '"email": "ada@example.com"' in out
    code, out, _ = await dfm("events", "show", *url, "cli-1", "-o", "json")
    shown = json.loads(out)
    code, again, _ = await dfm("events", "show", *url, shown["id"], "-o", "json")
    assert json.loads(again) == shown

    # Mistakes: one line, a non-zero exit.
    code, out, err = await dfm("events", "show", *url, "nope")
    assert (code, out) == (1, "")
    assert err.strip() == "dfm events show: error: nope: no such event"
    code, _, err = await dfm("events", "list", *url, "--since", "last tuesday")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    code, _, err = await dfm("events", "list", *url, "--limit", "0")
    assert code == 2
    code, _, err = await dfm("events", "replay", *url, "cli-1")
    assert code == 1
    assert "does not forward" in err


async def test_a_database_without_an_event_store_is_said_so(postgres_server: str) -> None:
    code, _, err = await dfm("events", "list", "--database-url", postgres_server)
    assert code == 2
    assert err.strip() == (
        "dfm events list: error: no event store in this database: no receiver has run against it"
    )
    code, _, err = await dfm("events", "list", "--database-url", "postgresql://127.0.0.1:1/x")
    assert code == 2
    assert "cannot connect" in err


async def test_replay_delivers_a_dead_letter_once_more_with_the_same_webhook_id(
    make_receiver: ClientFactory,
    database_url: str,
    consumer: Consumer,
    db: asyncpg.Connection,
) -> None:
    consumer.default = 500
    client = await make_receiver(source(None, consumer))
    await send(client, "cli-dead")
    await send(client, "cli-dead-2")

    await until_true(
        db, "SELECT count(*) = 2 FROM webhook_deliveries WHERE state = 'dead'", "two dead letters"
    )
    url = ["--database-url", database_url]
    code, out, _ = await dfm("events", "list", *url, "--state", "dead", "-o", "wide")
    assert code == 0
    assert "max_attempts" in out

    consumer.default = 200
    code, out, err = await dfm("events", "replay", *url, "cli-dead")
    assert code == 0, err
    assert out.strip() == "ci/gh cli-dead: re-queued"

    await until_true(
        db,
        "SELECT state = 'delivered' FROM webhook_deliveries WHERE event_id = 'cli-dead'",
        "the replay delivered",
    )
    assert consumer.ids() == ["cli-dead", "cli-dead-2", "cli-dead"]

    # By selection: a dry run first, then the rest of the dead letters.
    code, out, err = await dfm("events", "replay", *url, "--source", "ci/gh", "--dead",
                               "--dry-run", "-o", "json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == {"requeued": 1, "alreadyPending": 0, "dryRun": True}
    code, out, err = await dfm("events", "replay", *url, "--dead")
    assert code == 2
    assert "--source is required" in err
    code, out, err = await dfm("events", "replay", *url, "--source", "ci/gh", "--dead")
    assert code == 0, err
    assert "re-queued 1 deliveries" in out

    await until_true(
        db,
        "SELECT count(*) = 2 FROM webhook_deliveries WHERE state = 'delivered'",
        "both delivered",
    )
    assert sorted(consumer.ids()) == ["cli-dead", "cli-dead", "cli-dead-2", "cli-dead-2"]
