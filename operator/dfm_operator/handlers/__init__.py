"""kopf handlers, one module per kind. Importing this package registers them."""

from dfm_operator.handlers import lifecycle, managedsecret, schedules, webhooksource

__all__ = ["lifecycle", "managedsecret", "schedules", "webhooksource"]
