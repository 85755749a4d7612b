"""``agentcpt validate SPEC``: everything ``agentcpt run`` would refuse, found without running anything.

1. the spec: every problem at once, each naming its field (``synth.spec``);
2. the input globs, relative to the spec file's directory (``synth.inputs``);
3. the endpoints, when an enabled stage calls a model: the preflight of ``synth.llm.preflight``
   (``GET /models``, the model is served, one tiny completion in the stages' request shape).
   The embedded endpoint is checked only if it is already running (starting it means
   loading a model); ``--skip-endpoints`` checks nothing over the network.

Exit codes: 0 all good, 1 an endpoint failed its preflight, 2 the spec or a glob is bad.
"""

from __future__ import annotations

import asyncio
import sys
from typing import IO

from synth.inputs import check_inputs, resolve_globs
from synth.llm.base import EndpointFailure
from synth.llm.config import EMBEDDED, LLMConfig
from synth.llm.preflight import check_endpoint, distinct_endpoints
from synth.spec import RunSpec, load_spec, spec_dir


def _uses_llm(spec: RunSpec) -> bool:
    from synth.stages import get_stage

    return any(getattr(get_stage(name), "uses_llm", True) for name in spec.stages.enabled())


def _check_embedded(name: str, cfg: LLMConfig, out: IO[str]) -> bool:
    """Preflight the embedded endpoint if it is running; say so if it is not. True = no failure."""
    from synth.llm.embedded import HOST, served_models

    url = f"http://{HOST}:{cfg.embedded_port}/v1"
    if served_models(url) is None:
        print(f"{name}: embedded (not running; agentcpt run starts it on {url})", file=out)
        return True
    return _check_url(name, cfg.model_copy(update={"base_url": url}), out)


def _check_url(name: str, cfg: LLMConfig, out: IO[str]) -> bool:
    try:
        check = asyncio.run(check_endpoint(name, cfg))
    except EndpointFailure as err:
        print(str(err), file=out)
        return False
    print(check.describe(), file=out)
    return True


def validate_command(spec: str, skip_endpoints: bool = False, out: IO[str] | None = None) -> int:
    """Check ``spec`` (see the module docstring); SpecError for a bad spec or glob (exit 2)."""
    out = out or sys.stdout
    loaded = load_spec(spec)
    base = spec_dir(spec)
    check_inputs(loaded, base)
    web = resolve_globs(loaded.inputs.web, "inputs.web", base) if loaded.inputs.web else []
    trajectories = (
        resolve_globs(loaded.inputs.trajectories, "inputs.trajectories", base) if loaded.inputs.trajectories else []
    )
    enabled = loaded.stages.enabled()
    print(
        f"{spec}: spec ok; stages: {', '.join(enabled) or 'none'}; "
        f"inputs: {len(web)} web files, {len(trajectories)} trajectory files (globs relative to {base})",
        file=out,
    )
    if skip_endpoints:
        print("endpoints: not checked (--skip-endpoints)", file=out)
        return 0
    if not _uses_llm(loaded):
        print("endpoints: no enabled stage calls a model", file=out)
        return 0
    ok = True
    for name, cfg in distinct_endpoints(loaded.llm, loaded.judge_llm):
        ok &= _check_embedded(name, cfg, out) if cfg.base_url == EMBEDDED else _check_url(name, cfg, out)
    return 0 if ok else 1
