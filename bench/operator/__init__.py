"""The operator benchmark: N WebhookSources against the emulated Kubernetes API."""
