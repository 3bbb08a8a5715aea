"""kopf handlers, one module per kind (and one for Secret events, one for the Jobs of the
scheduled kinds). Importing this package registers them. Handlers only translate kopf events
into service calls (``services/``)."""

from dfm_operator.handlers import (
    jobs,
    lifecycle,
    managedsecret,
    schedules,
    secrets,
    syncschedule,
    webhooksource,
)

__all__ = [
    "jobs",
    "lifecycle",
    "managedsecret",
    "schedules",
    "secrets",
    "syncschedule",
    "webhooksource",
]
