"""agentcpt.synth — the domain: records, LLM client, stages, judges, rendering, shard I/O."""
