"""Pure pieces of the receiver: partitions, rate limit, secret files, config rules."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from webhook_server import secrets
from webhook_server.config import (
    AuthConfig,
    DatabaseConfig,
    Provider,
    ReceiverConfig,
    SecretSource,
    SourceConfig,
    VerificationConfig,
)
from webhook_server.ratelimit import TokenBucket
from webhook_server.store import partitions
from webhook_server.store.migrations import load_migrations


def test_partition_names_are_utc_days() -> None:
    assert partitions.partition_name(date(2026, 1, 5)) == "webhook_events_p20260105"
    assert partitions.partition_day("webhook_events_p20260105") == date(2026, 1, 5)
    assert partitions.partition_day("webhook_events_default") is None


def test_partitions_are_created_for_today_and_days_ahead_in_utc() -> None:
    late_evening_in_new_york = datetime.fromisoformat("2026-03-01T23:30:00-05:00")
    assert partitions.days_to_create(late_evening_in_new_york, 2) == [
        date(2026, 3, 2),
        date(2026, 3, 3),
        date(2026, 3, 4),
    ]


def test_a_partition_is_dropped_only_when_all_its_rows_are_past_retention() -> None:
    existing = ["webhook_events_p20260101", "webhook_events_p20260102", "other_table"]
    now = datetime(2026, 1, 9, 12, tzinfo=UTC)
    # 7 days: cutoff 2026-01-02T12:00 -> Jan 1 (ends Jan 2 00:00) goes, Jan 2 still has live rows.
    assert partitions.partitions_to_drop(existing, now, 7) == ["webhook_events_p20260101"]
    assert partitions.partitions_to_drop(existing, now, 30) == []


def test_token_bucket_allows_burst_then_refills_at_rate() -> None:
    t = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: t[0])
    assert [bucket.take()[0] for _ in range(4)] == [True, True, True, False]
    allowed, retry_after = bucket.take()
    assert not allowed
    assert retry_after == 1
    t[0] = 0.5  # one token back at 2/s
    assert bucket.take() == (True, 0)
    assert bucket.take()[0] is False


def test_managed_secret_dir_previous_is_valid_until_its_expiry(tmp_path: Path) -> None:
    (tmp_path / "current").write_text("B")
    (tmp_path / "previous").write_text("A")
    (tmp_path / "previous-expires-at").write_text("2026-11-27T12:00:00Z")
    values = secrets.SourceSecrets([SecretSource(dir=str(tmp_path))])
    expiry = datetime(2026, 11, 27, 12, tzinfo=UTC).timestamp()
    assert values.valid_at(expiry - 1) == [b"B", b"A"]
    assert values.valid_at(expiry) == [b"B"]


def test_unreadable_expiry_does_not_keep_the_previous_secret_alive(tmp_path: Path) -> None:
    (tmp_path / "current").write_text("B")
    (tmp_path / "previous").write_text("A")
    (tmp_path / "previous-expires-at").write_text("soon")
    assert secrets.SourceSecrets([SecretSource(dir=str(tmp_path))]).valid_at(0.0) == [b"B"]


def test_secret_files_lose_a_trailing_newline_and_missing_ones_are_not_loaded(
    tmp_path: Path,
) -> None:
    (tmp_path / "s").write_text("value\n")
    present = secrets.SourceSecrets([SecretSource(file=str(tmp_path / "s"))])
    assert present.valid_at(0) == [b"value"]
    absent = secrets.SourceSecrets([SecretSource(file=str(tmp_path / "none"))])
    assert not absent.loaded


def _source(**kw: object) -> SourceConfig:
    return SourceConfig.model_validate({"name": "s", **kw})


def test_config_rules() -> None:
    with pytest.raises(ValidationError, match=r"hmac requires verification\.header"):
        _source(provider="hmac", verification={"secrets": [{"value": "x"}]})
    with pytest.raises(ValidationError, match="jwt requires auth"):
        _source(provider="jwt")
    with pytest.raises(ValidationError, match="requires a verification secret"):
        _source(provider="github")
    with pytest.raises(ValidationError, match="exactly one of value, file or dir"):
        SecretSource(value="a", file="/b")
    with pytest.raises(ValidationError, match="asymmetric"):
        AuthConfig(public_key="pem", algorithms=["HS256"])
    with pytest.raises(ValidationError, match="Extra inputs"):
        _source(provider="github", verification={"secrets": [{"value": "x"}]}, colour="red")


def test_two_sources_cannot_share_a_path() -> None:
    gh = VerificationConfig(secrets=[SecretSource(value="x")])
    a = SourceConfig(name="a", provider=Provider.GITHUB, path="/hook", verification=gh)
    b = SourceConfig(name="b", provider=Provider.GITHUB, path="/hook", verification=gh)
    with pytest.raises(ValidationError, match=r"share path /hook"):
        ReceiverConfig(sources=[a, b], database=DatabaseConfig(url="postgresql://x"))


def test_receiver_config_round_trips_through_yaml(tmp_path: Path) -> None:
    source = _source(provider="github", verification={"secrets": [{"file": "/etc/s/secret"}]})
    config = ReceiverConfig(sources=[source], database=DatabaseConfig(urlFile="/etc/db/url"))
    file = tmp_path / "receiver.yaml"
    file.write_text(config.dump_yaml())
    assert "urlFile: /etc/db/url" in file.read_text()
    assert ReceiverConfig.load(file) == config


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))
    assert "webhook_events" in load_migrations()[0].sql


def test_an_hmac_template_must_sign_the_body() -> None:
    assert VerificationConfig(signed_content="{timestamp}.{body}").signed_content
    with pytest.raises(ValidationError, match="body"):
        VerificationConfig(signed_content="{timestamp}.{id}")
