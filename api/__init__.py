"""agentcpt.api — the FastAPI control plane."""
