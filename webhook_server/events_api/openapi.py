"""The OpenAPI 3.1 document of the Events API, served at ``GET /events/openapi.json``.

Written by hand next to the views it describes; tests validate it with openapi-spec-validator
and check every answer the tests get against its schemas, so the two cannot drift apart.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from webhook_server.store.events import (
    DEFAULT_PAGE_SIZE,
    DELIVERY_STATES,
    MAX_PAGE_SIZE,
    MAX_PAYLOAD_PAGE_SIZE,
)

_TIME = {"type": "string", "format": "date-time"}
_PROBLEM = "#/components/schemas/Problem"
_DELIVERY_FIELDS = [
    "state", "webhookId", "attempts", "nextAttemptAt", "lastAttemptAt", "lastStatus", "lastError",
    "deliveredAt", "deadAt", "requeuedAt", "replays",
]  # fmt: skip
_EVENT_FIELDS = [
    "id", "source", "eventId", "subject", "type", "receivedAt", "requestId", "eventCount", "size",
    "delivery",
]  # fmt: skip
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": _PROBLEM}}},
    }


def _json(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_AUTH_ERRORS = {
    "401": _problem("No bearer token, or one that is expired, malformed, of an algorithm not "
                    "allowed, or of another issuer, audience or authorized party."),
    "403": _problem("The token lacks the scope the operation needs."),
    "429": _problem("Past the source's request budget; see Retry-After."),
    "503": _problem("The event store, or the signing keys (JWKS), cannot be reached; see "
                    "Retry-After."),
}  # fmt: skip

_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The event's id, as the API gives it out (opaque).",
    "schema": {"type": "string"},
}
_INCLUDE_PARAM = {
    "name": "include",
    "in": "query",
    "required": False,
    "description": "payload: also return each event's payload and stored headers (they may "
    "hold personal data: ask only when you need them).",
    "schema": {"type": "string", "enum": ["payload"]},
}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


@functools.cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "df-middleware Events API",
            "version": "v1alpha1",
            "description": "List, read and replay the events a receiver stored "
            "(docs/events-api.md). Every request needs a bearer JWT with the source's read "
            "scope (listing, reading) or replay scope (replaying).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/events": {
                "get": {
                    "operationId": "listEvents",
                    "summary": "List events, newest first, a page at a time.",
                    "parameters": [
                        _query(
                            "source",
                            "The source (namespace/name); required when the receiver serves "
                            "several sources with the API.",
                            {"type": "string"},
                        ),
                        _query("type", "Only events of this type.", {"type": "string"}),
                        _query(
                            "eventId",
                            "Only events with this provider id.",
                            {"type": "string"},
                        ),
                        _query("since", "Received at or after this time (RFC 3339).", _TIME),
                        _query("until", "Received before this time (RFC 3339).", _TIME),
                        _query(
                            "state",
                            "Only events whose delivery is in this state (none: no delivery).",
                            {"type": "string", "enum": list(DELIVERY_STATES)},
                        ),
                        _query(
                            "limit",
                            f"Page size (default {DEFAULT_PAGE_SIZE}; at most {MAX_PAGE_SIZE}, "
                            f"{MAX_PAYLOAD_PAGE_SIZE} with include=payload).",
                            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
                        ),
                        _query(
                            "cursor",
                            "The nextCursor of the previous page.",
                            {"type": "string"},
                        ),
                        _INCLUDE_PARAM,
                    ],
                    "responses": {
                        "200": _json("A page of events.", "EventPage"),
                        "400": _problem("A parameter is not valid."),
                        "404": _problem("No such source (or it has no Events API)."),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/events/{id}": {
                "get": {
                    "operationId": "getEvent",
                    "summary": "One event, with its delivery.",
                    "parameters": [_ID_PARAM, _INCLUDE_PARAM],
                    "responses": {
                        "200": _json("The event.", "Event"),
                        "400": _problem("A parameter is not valid."),
                        "404": _problem("No such event."),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/events/{id}/replay": {
                "post": {
                    "operationId": "replayEvent",
                    "summary": "Deliver the event to the forward target once more (same "
                    "webhook-id).",
                    "parameters": [_ID_PARAM],
                    "responses": {
                        "202": _json("Re-queued: the event, its delivery pending.", "Event"),
                        "404": _problem("No such event."),
                        "409": _problem(
                            "The source does not forward, or the delivery is pending already."
                        ),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/events/replay": {
                "post": {
                    "operationId": "replayEvents",
                    "summary": "Re-queue the deliveries of the dead-lettered events, or of the "
                    "events of a time range.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/BulkReplay"}
                            }
                        },
                    },
                    "responses": {
                        "200": _json("A dry run: what would be re-queued.", "ReplayResult"),
                        "202": _json("Re-queued.", "ReplayResult"),
                        "400": _problem("The body is not valid, or selects nothing bounded."),
                        "404": _problem("No such source (or it has no Events API)."),
                        "409": _problem("The source does not forward."),
                        "413": _problem("The body is too large."),
                        "422": _problem("More events are selected than one replay may re-queue."),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/events/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document.",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A JWT verified like spec.auth (JWKS or PEM key, issuer, "
                    "audiences, authorized parties), carrying the source's read or replay scope "
                    "in its scope claim. Only the Authorization header is read (never a cookie).",
                }
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "requestId": {"type": "string"},
                    },
                },
                "Delivery": {
                    "type": "object",
                    "description": "The event's row in the forward outbox.",
                    "additionalProperties": False,
                    "required": _DELIVERY_FIELDS,
                    "properties": {
                        "state": {"type": "string", "enum": ["pending", "delivered", "dead"]},
                        "webhookId": {
                            "type": "string",
                            "description": "The webhook-id header the target gets (the same on "
                            "every attempt and replay).",
                        },
                        "attempts": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Attempts since it was queued (or last re-queued).",
                        },
                        "nextAttemptAt": _NULLABLE_TIME,
                        "lastAttemptAt": _NULLABLE_TIME,
                        "lastStatus": {"type": ["integer", "null"]},
                        "lastError": {
                            "type": ["string", "null"],
                            "description": "A closed-set word: the last failure, or why it "
                            "was dead-lettered (max_attempts, expired, gone).",
                        },
                        "deliveredAt": _NULLABLE_TIME,
                        "deadAt": _NULLABLE_TIME,
                        "requeuedAt": _NULLABLE_TIME,
                        "replays": {"type": "integer", "minimum": 0},
                    },
                },
                "Event": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": _EVENT_FIELDS,
                    "properties": {
                        "id": {"type": "string"},
                        "source": {"type": "string"},
                        "eventId": {"type": "string"},
                        "subject": {
                            "type": ["string", "null"],
                            "description": "jwt sources: the sending token's subject.",
                        },
                        "type": {"type": ["string", "null"]},
                        "receivedAt": _TIME,
                        "requestId": {"type": "string"},
                        "eventCount": {"type": "integer", "minimum": 1},
                        "size": {"type": "integer", "minimum": 0, "description": "Bytes."},
                        "delivery": {
                            "oneOf": [{"$ref": "#/components/schemas/Delivery"}, {"type": "null"}]
                        },
                        "payload": {
                            "type": "string",
                            "description": "include=payload only: the body as received.",
                        },
                        "payloadEncoding": {"type": "string", "enum": ["utf-8", "base64"]},
                        "headers": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                            "description": "include=payload only: the stored request headers "
                            "(never credentials or signatures: those are not stored).",
                        },
                    },
                    "dependentRequired": {
                        "payload": ["payloadEncoding", "headers"],
                    },
                },
                "EventPage": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["items", "nextCursor"],
                    "properties": {
                        "items": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Event"},
                        },
                        "nextCursor": {
                            "type": ["string", "null"],
                            "description": "Pass as cursor for the next page; null on the last.",
                        },
                    },
                },
                "BulkReplay": {
                    "type": "object",
                    "additionalProperties": False,
                    "description": 'Which events: state "dead", or a time range (since, and '
                    "until if wanted); type narrows either.",
                    "properties": {
                        "source": {"type": "string"},
                        "state": {"type": "string", "enum": ["dead", "delivered", "none"]},
                        "type": {"type": "string"},
                        "since": _TIME,
                        "until": _TIME,
                        "dryRun": {"type": "boolean", "default": False},
                    },
                    "anyOf": [
                        {"required": ["state"], "properties": {"state": {"const": "dead"}}},
                        {"required": ["since"]},
                    ],
                },
                "ReplayResult": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["requeued", "alreadyPending", "dryRun"],
                    "properties": {
                        "requeued": {"type": "integer", "minimum": 0},
                        "alreadyPending": {"type": "integer", "minimum": 0},
                        "dryRun": {"type": "boolean"},
                    },
                },
            },
        },
    }


def document() -> dict[str, Any]:
    """A copy of the document (callers may change theirs)."""
    return copy.deepcopy(_document())
