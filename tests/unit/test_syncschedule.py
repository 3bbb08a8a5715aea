"""SyncSchedule's pure parts: the children it is built into, and what a Job means for status."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dfm_operator import constants as c
from dfm_operator.api import SyncSchedule, SyncScheduleStatus
from dfm_operator.api.common import SecretKeyRef
from dfm_operator.api.syncschedule import SyncRun
from dfm_operator.builders.syncschedule import SyncInputs, build_children
from dfm_operator.conditions import ConditionUpdate
from dfm_operator.services.jobs import JobOutcome, is_newer, job_outcome
from dfm_operator.settings import OperatorSettings
from dfm_operator.syncruns import (
    after_run,
    longest_interval,
    next_run,
    run_record,
    sync_ready,
)
from webhook_server.sync.config import SyncConfig
from webhook_server.sync.summary import RunSummary, parse_summary

SETTINGS = OperatorSettings()
K8S_VERSION = "1.37.0"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def schedule(**spec: Any) -> SyncSchedule:
    http = {"url": "https://api.example.com/items", **spec.pop("http", {})}
    return SyncSchedule.model_validate(
        {
            "apiVersion": "dfm.dev/v1alpha1",
            "kind": "SyncSchedule",
            "metadata": {"name": "contacts", "namespace": "crm", "uid": "u-1"},
            "spec": {
                "schedule": "*/15 * * * *",
                "connector": {"http": http},
                "sink": {"webhookSourceRef": {"name": "ghl"}},
                **spec,
            },
        }
    )


def inputs(token: str | None = None) -> SyncInputs:
    return SyncInputs(
        settings=SETTINGS,
        sink="crm/ghl",
        database=SecretKeyRef(name="events-db", key="dsn"),
        retention_days=14,
        token_secret=token,
    )


def children(s: SyncSchedule, i: SyncInputs) -> dict[str, dict[str, Any]]:
    return {child["kind"]: child for child in build_children(s, i)}


# --- builders ---------------------------------------------------------------------------------


def test_the_cronjob_carries_the_schedule_settings() -> None:
    s = schedule(
        timeZone="Europe/Berlin",
        suspend=True,
        concurrencyPolicy="Replace",
        startingDeadlineSeconds=120,
        successfulJobsHistoryLimit=1,
        failedJobsHistoryLimit=5,
        runTimeoutSeconds=600,
    )
    cronjob = children(s, inputs())["CronJob"]
    spec = cronjob["spec"]
    assert cronjob["metadata"]["name"] == "contacts-sync"
    assert (spec["schedule"], spec["timeZone"], spec["suspend"]) == (
        "*/15 * * * *",
        "Europe/Berlin",
        True,
    )
    assert (spec["concurrencyPolicy"], spec["startingDeadlineSeconds"]) == ("Replace", 120)
    assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (1, 5)
    job = spec["jobTemplate"]["spec"]
    assert (job["backoffLimit"], job["activeDeadlineSeconds"]) == (0, 660)
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_children_are_owned_labelled_and_valid_kubernetes_objects() -> None:
    for child in build_children(schedule(), inputs("ghl-token")):
        meta = child["metadata"]
        assert meta["ownerReferences"][0]["uid"] == "u-1"
        assert meta["ownerReferences"][0]["kind"] == "SyncSchedule"
        assert meta["labels"][c.LABEL_MANAGED_BY] == c.MANAGED_BY
        assert meta["labels"][c.LABEL_SYNC] == "contacts"
        kubernetes_validate.validate(child, K8S_VERSION, strict=True)


def test_the_job_runs_restricted_and_reports_through_its_termination_message() -> None:
    cronjob = children(schedule(), inputs())["CronJob"]
    template = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    pod = template["spec"]
    container = pod["containers"][0]
    assert template["metadata"]["labels"][c.LABEL_SYNC] == "contacts"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["args"] == [
        "sync", "run", "--config", "/etc/dfm/config/sync.yaml",
        "--summary-file", "/dev/termination-log",
    ]  # fmt: skip
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "File"
    assert all("subPath" not in m for m in container["volumeMounts"])


def test_only_the_access_token_is_mounted_and_optional() -> None:
    s = schedule(http={"auth": {"managedSecretRef": {"name": "ghl-oauth"}}})
    cronjob = children(s, inputs("ghl-token"))["CronJob"]
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["token"]["secret"] == {
        "secretName": "ghl-token",
        "items": [{"key": "access_token", "path": "access_token"}],
        "optional": True,
    }
    assert volumes["database"]["secret"] == {
        "secretName": "events-db",
        "items": [{"key": "dsn", "path": "dsn"}],
    }
    no_auth = children(schedule(), inputs("ghl-token"))["CronJob"]
    mounted = no_auth["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    assert "token" not in {v["name"] for v in mounted}


def test_the_config_map_holds_the_job_config_with_paths_never_values() -> None:
    s = schedule(
        http={
            "auth": {"managedSecretRef": {"name": "ghl-oauth"}},
            "cursor": {"param": "startAfterId", "from": "meta.startAfterId"},
            "query": {"locationId": "L"},
            "rateLimit": {"requestsPerSecond": 2, "burst": 4},
        },
        retry={"maxAttempts": 3, "backoffSeconds": 10},
    )
    config_map = children(s, inputs("ghl-token"))["ConfigMap"]
    config = SyncConfig.model_validate(yaml.safe_load(config_map["data"]["sync.yaml"]))
    assert (config.schedule, config.sink.source, config.sink.retention_days) == (
        "crm/contacts",
        "crm/ghl",
        14,
    )
    assert config.database.url_file == "/etc/dfm/database/dsn"
    assert config.token is not None
    assert (config.token.file, config.token.value) == ("/etc/dfm/token/access_token", None)
    assert (config.http.requests_per_second, config.http.burst) == (2, 4)
    assert (config.retry.max_attempts, config.retry.backoff_seconds) == (3, 10)
    assert config.http.event_type == "contacts"
    assert config.run_timeout_seconds == 900


# --- Jobs, Pods, runs -------------------------------------------------------------------------


def job(
    name: str = "contacts-sync-29000000",
    *,
    condition: str = "Complete",
    started: datetime = T0,
    reason: str = "",
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "crm", "uid": f"uid-{name}",
                     "labels": {c.LABEL_SYNC: "contacts"}},
        "status": {
            "startTime": started.isoformat(),
            "completionTime": (started + timedelta(seconds=60)).isoformat(),
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True"},
                {"type": condition, "status": "True", "reason": reason,
                 "message": "Job was active"},
            ],
        },
    }  # fmt: skip


def pod(owner: dict[str, Any], message: str | None, exit_code: int = 0) -> dict[str, Any]:
    terminated: dict[str, Any] = {"exitCode": exit_code, "finishedAt": "2026-12-01T12:01:00Z"}
    if message is not None:
        terminated["message"] = message
    return {
        "metadata": {"ownerReferences": [{"uid": owner["metadata"]["uid"]}]},
        "status": {"containerStatuses": [{"name": "sync", "state": {"terminated": terminated}}]},
    }


def outcome(j: dict[str, Any], message: str | None = None, exit_code: int = 0) -> JobOutcome:
    found = job_outcome(j, [pod(j, message, exit_code)], "sync")
    assert found is not None
    return found


def summary_text(result: str = "Succeeded", reason: str = "Synced") -> str:
    run = RunSummary("crm/contacts", "r", T0, T0 + timedelta(seconds=9))
    run.result, run.reason, run.message, run.items, run.stored = result, reason, "m", 20, 5
    return run.dumps()


def test_a_run_is_recorded_from_its_summary_else_from_its_job() -> None:
    read = parse_summary(summary_text())
    run = run_record(outcome(job(), summary_text()), read, "crm", T0)
    assert (run.succeeded, run.reason, run.items, run.stored, run.duration_seconds) == (
        True,
        "Synced",
        20,
        5,
        9,
    )
    assert run.start_time == T0
    failed = outcome(job(condition="Failed", reason="BackoffLimitExceeded"), None, exit_code=137)
    oom = run_record(failed, None, "crm", T0)
    assert (oom.succeeded, oom.reason, oom.items) == (False, "JobFailed", None)
    assert "without a summary (BackoffLimitExceeded: Job was active, exit code 137)" in oom.message
    assert "kubectl -n crm describe job contacts-sync-29000000" in oom.message
    late = run_record(outcome(job(condition="Failed", reason="DeadlineExceeded")), None, "crm", T0)
    assert late.reason == "DeadlineExceeded"
    assert late.duration_seconds == 60


def test_a_job_is_counted_once_and_older_ones_never() -> None:
    # The rule the service applies before counting (services.jobs.is_newer, by start and name).
    last = run_record(outcome(job()), None, "crm", T0)
    assert is_newer(outcome(job()), None, None) is True
    assert is_newer(outcome(job()), last.start_time, last.job) is False
    older = job("contacts-sync-28999985", started=T0 - timedelta(minutes=15))
    assert is_newer(outcome(older), last.start_time, last.job) is False
    newer = job("contacts-sync-29000015", started=T0 + timedelta(minutes=15))
    assert is_newer(outcome(newer), last.start_time, last.job) is True


def test_failures_count_up_and_a_success_resets_them() -> None:
    good = SyncRun(job="a", start_time=T0, completion_time=T0, succeeded=True,
                   reason="Synced", items=7)  # fmt: skip
    bad = SyncRun(job="b", start_time=T0, succeeded=False, reason="UpstreamFailing")
    status = SyncScheduleStatus(consecutive_failures=2, items_synced=3, last_successful_time=T0)
    failed = after_run(status, bad)
    assert failed.consecutive_failures == 3
    assert "items_synced" not in failed.model_fields_set  # the last good run's count stays
    assert "last_successful_time" not in failed.model_fields_set
    succeeded = after_run(status, good)
    assert (succeeded.consecutive_failures, succeeded.items_synced) == (0, 7)
    assert succeeded.last_successful_time == T0


def test_ready_puts_problems_first_then_suspend_then_the_last_run() -> None:
    missing = ConditionUpdate(
        c.READY, False, c.REASON_SINK_NOT_FOUND, "WebhookSource ghl not found"
    )
    good = SyncRun(job="j1", start_time=T0, succeeded=True, reason="Synced", message="5 items")
    bad = SyncRun(job="j2", start_time=T0, succeeded=False, reason="BadResponse", message="x")
    assert sync_ready(missing, True, bad, T0) == missing
    assert sync_ready(None, True, good, T0).reason == "Suspended"
    assert sync_ready(None, True, good, T0).status is False
    first = sync_ready(None, False, None, T0)
    assert (first.status, first.reason) == (True, "Scheduled")
    assert "2026-12-01T12:00:00Z" in first.message
    assert sync_ready(None, False, good, T0) == ConditionUpdate(
        c.READY, True, "Synced", "job j1: 5 items"
    )
    assert sync_ready(None, False, bad, T0) == ConditionUpdate(
        c.READY, False, "BadResponse", "job j2: x"
    )


@pytest.mark.parametrize(
    ("cron", "seconds"),
    [
        ("*/15 * * * *", 900),
        ("@hourly", 3600),
        ("0 9 * * 1-5", 3 * 86400),  # Friday to Monday: the alert must not fire every Monday
        ("0 3 1 * *", 31 * 86400),
    ],
)
def test_the_interval_is_the_longest_gap_between_runs(cron: str, seconds: float) -> None:
    assert longest_interval(cron, "UTC", T0) == seconds


def test_the_next_run_is_in_the_schedules_time_zone() -> None:
    upcoming = next_run("0 3 * * *", "Europe/Berlin", T0)
    assert upcoming.astimezone(UTC) == datetime(2026, 12, 2, 2, 0, tzinfo=UTC)


def test_the_summary_json_is_what_the_builder_config_names() -> None:
    # The operator reads exactly what `dfm sync run` writes (one contract, in the data plane).
    text = summary_text("Failed", "TokenUnavailable")
    data = json.loads(text)
    assert data["reason"] == c.REASON_TOKEN_UNAVAILABLE
    assert set(data) >= {"v", "result", "reason", "message", "items", "stored", "durationSeconds"}
