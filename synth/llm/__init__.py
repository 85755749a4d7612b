"""The LLM layer: one async client for any OpenAI-compatible endpoint, and the embedded endpoint."""
