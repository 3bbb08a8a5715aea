"""kopf handlers, one module per kind (and one for Secret events). Importing this package
registers them. Handlers only translate kopf events into service calls (``services/``)."""

from dfm_operator.handlers import (
    jobs,
    lifecycle,
    managedsecret,
    schedules,
    secrets,
    webhooksource,
)

__all__ = ["jobs", "lifecycle", "managedsecret", "schedules", "secrets", "webhooksource"]
