"""agentcpt: the distribution's command line (``agentcpt.cli``), the composition root over
synth, pipelines, api and pretrain."""
