"""kopf handlers, one module per kind (and one for Secret events). Importing this package
registers them. Handlers only translate kopf events into service calls (``services/``)."""

from dfm_operator.handlers import (
    lifecycle,
    managedsecret,
    schedules,
    secrets,
    syncschedule,
    webhooksource,
)

__all__ = ["lifecycle", "managedsecret", "schedules", "secrets", "syncschedule", "webhooksource"]
