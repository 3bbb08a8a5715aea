"""df-middleware control plane: CR models, pure builders, kopf handlers."""
