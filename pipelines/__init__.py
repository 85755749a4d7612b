"""agentcpt.pipelines — run specs as work units on Ray."""
