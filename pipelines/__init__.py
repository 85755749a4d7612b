"""agentcpt.pipelines — run specs as work units on Ray.

One session of a run (``agentcpt run``), top to bottom:

* ``runner`` — the session: spec, run directory, Ray, endpoints, workers, scheduler, report;
* ``rundirs`` — run ids, and which spec changes a resumed run accepts;
* ``fence`` — ends workers of a killed earlier session before orphans are removed;
* ``cluster`` — joining/starting Ray, and the pool of worker actors;
* ``scheduler`` — the driver loop: streaming map units, barrier prepares, backpressure,
  failures and cancellation;
* ``units`` — unit tasks and results, and a stage's plan of units;
* ``worker`` — runs any stage's units and commits them exactly once;
* ``llm_setup`` / ``limiter`` — LLM endpoints, and one cluster-wide limiter per endpoint;
* ``progress`` / ``status`` — ``progress.json``, progress bars, ``agentcpt status`` and ``cancel``;
* ``testing`` — tiny deterministic stages and seeding helpers for tests and benchmarks.

Nothing in ``synth/`` imports Ray; everything Ray-specific lives here.
"""
