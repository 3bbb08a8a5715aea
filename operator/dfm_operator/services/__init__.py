"""One service per kind: everything a reconciliation of that kind does, apart from kopf.

A service reads what it needs through the kernel's context (``ctx.kube``, the one door to the
API server), decides with pure builders and policies, applies, and writes status with
:func:`dfm_operator.kernel.write_status`. It raises :class:`~dfm_operator.kernel.InvalidSpec` or
:class:`~dfm_operator.kernel.Retry`; handlers turn those into kopf's errors.
"""
