"""Rules on a resource's own name, where it ends up in names and labels of its children.

Kubernetes accepts any DNS subdomain (253 characters, dots allowed) as a custom resource's name,
but a WebhookSource's name becomes its Service's name (an RFC 1035 label of at most 63
characters, ``<name>-receiver``) and every child's ``app.kubernetes.io/instance`` label (at most
63). A name that breaks them would leave a receiver half applied; the CRD refuses it up front
(a CEL rule on ``metadata.name``) and the model says why when the manifest is read offline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dfm_operator.api.common import CelRule

DNS_LABEL = "^[a-z]([-a-z0-9]*[a-z0-9])?$"


@dataclass(frozen=True)
class NameRule:
    max_length: int
    dns_label: bool
    why: str

    @property
    def message(self) -> str:
        shape = (
            "a lowercase RFC 1035 label (a-z, 0-9, '-'; a letter first) of "
            if self.dns_label
            else ""
        )
        return f"metadata.name must be {shape}at most {self.max_length} characters: {self.why}"

    def cel(self) -> CelRule:
        rule = f"size(self.metadata.name) <= {self.max_length}"
        if self.dns_label:
            rule += f" && self.metadata.name.matches('{DNS_LABEL}')"
        return CelRule(rule, self.message)

    def check(self, name: str) -> None:
        if len(name) > self.max_length or (self.dns_label and not re.fullmatch(DNS_LABEL, name)):
            raise ValueError(self.message)


# "<name>-receiver" is the receiver's Service: 63 - len("-receiver") = 54.
WEBHOOK_SOURCE_NAME = NameRule(54, True, "it names the receiver's Service, <name>-receiver")
MANAGED_SECRET_NAME = NameRule(63, False, "it is the value of its Secret's instance label")
# "<name>-backup" is its CronJob, whose name may have at most 52 characters (the controller
# appends an 11-character suffix to name each Job): 52 - len("-backup") = 45.
BACKUP_SCHEDULE_NAME = NameRule(45, True, "it names the CronJob, <name>-backup (at most 52)")
# "<name>-sync" likewise: 52 - len("-sync") = 47.
SYNC_SCHEDULE_NAME = NameRule(47, True, "it names the CronJob, <name>-sync (at most 52)")
