"""An emulated Kubernetes API server (kmock-based) for testing the kopf operator over real HTTP."""
