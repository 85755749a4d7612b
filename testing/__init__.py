"""Test doubles shared by the suite and the benchmarks: a fake OpenAI-compatible server,
an in-process scripted LLM, toy stages for the runner, and a real API server process.

Product code (``synth``, ``pipelines``, ``api``, ``pretrain``) never imports this package;
``tests/test_architecture.py`` enforces that.
"""
