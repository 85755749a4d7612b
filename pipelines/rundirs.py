"""What may change between the sessions of one run: spec fields and stage prompts.

A run is resumed by running its spec again with ``--run-id``. Its stored ``spec.yaml`` is
what produced its committed shards, so a resumed session must produce the same outputs:
**any difference in a field that can change outputs refuses the resume**, naming the
field (exit 2). The fields that only say *how* or *where* to run may change:

* ``name``, ``output_dir``, ``card`` (dataset card metadata); ``execution.ray_address``,
  ``execution.max_units_in_flight``;
* per endpoint (``llm``, ``judge_llm``): ``base_url``, ``api_key_env``, ``max_concurrency``,
  ``requests_per_minute``, ``tokens_per_minute``, ``timeout_s``, ``max_retries``, ``price``,
  ``connect_timeout_s``, ``max_tokens_param``, ``extra_headers``, ``breaker``.

Everything else — inputs, stage configs, which stages are enabled, the model, temperature,
``max_tokens``, ``unit_size``, ``seed`` — must match. ``judge_llm: null`` is compared as the
``llm`` block it stands for. (``base_url`` is allowed to change so that a run started on
the embedded endpoint can move to a vLLM server of the same model; the model name each
record carries is the check on that.) The stored ``spec.yaml`` is kept as written by the
first session. Input files are compared by their globs, not their bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from synth.layout import RunLayout
from synth.runstate import RunDir
from synth.shards import atomic_write_bytes
from synth.spec import RunSpec, SpecError, dump_spec, parse_spec
from synth.stage import Stage

OPERATIONAL_FIELDS: frozenset[str] = frozenset(
    {"name", "output_dir", "card", "execution.ray_address", "execution.max_units_in_flight"}
    | {
        f"{block}.{key}"
        for block in ("llm", "judge_llm")
        for key in (
            "base_url",
            "api_key_env",
            "max_concurrency",
            "requests_per_minute",
            "tokens_per_minute",
            "timeout_s",
            "max_retries",
            "price",
            # How to reach the endpoint and speak its dialect, not what it is asked: a run that
            # failed its preflight (a 400 to max_tokens, a wrong header) resumes once fixed.
            "connect_timeout_s",
            "max_tokens_param",
            "extra_headers",
            "breaker",
        )
    }
)


def _normalized(spec: RunSpec) -> dict[str, Any]:
    data = spec.model_dump(mode="json")
    data["judge_llm"] = spec.effective_judge_llm.model_dump(mode="json")
    return data


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if path in OPERATIONAL_FIELDS:
                continue
            out.update(_flatten(v, path) if isinstance(v, dict) and v else {path: v})
        return out
    return {prefix: value}


def output_changing_difference(stored: RunSpec, new: RunSpec) -> str | None:
    """The first field (dotted path) whose difference would change outputs, or None."""
    a, b = _flatten(_normalized(stored)), _flatten(_normalized(new))
    # Spec order (llm before judge_llm), so the field named is the one a reader looks at first.
    for path in [*a, *(p for p in b if p not in a)]:
        if a.get(path, _MISSING) != b.get(path, _MISSING):
            # A block present on one side only (a stage enabled in one spec) is named as the
            # block, not as its first field.
            parts = path.split(".")
            for i in range(1, len(parts)):
                prefix = ".".join(parts[:i])
                if prefix in a or prefix in b:
                    return prefix
            return path
    return None


_MISSING = object()


def read_stored_spec(run_dir: Path) -> RunSpec | None:
    path = RunLayout(run_dir).spec
    if not path.exists():
        return None
    try:
        return parse_spec(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (SpecError, yaml.YAMLError) as err:
        raise SpecError(
            "run_id", f"the stored spec of {run_dir.name} is unreadable ({err}); start a new run"
        ) from None


def driver_alive(run_dir: RunDir) -> int | None:
    """The pid of a live driver of this run on this host, if its status says one is running."""
    import socket

    import psutil

    status = run_dir.read_status()
    if (
        status is None
        or status.state != "running"
        or status.pid is None
        or status.host != socket.gethostname()
    ):
        return None
    if status.pid == os.getpid() or not psutil.pid_exists(status.pid):
        return None
    try:
        created = psutil.Process(status.pid).create_time()
    except psutil.Error:
        return None
    return status.pid if status.may_be_driver(created) else None  # else a reused pid


def prepare_run_dir(run_dir: Path, spec: RunSpec) -> bool:
    """Create or check a run directory for a session; returns True when resuming.

    Raises ``SpecError`` (exit 2) if the stored spec differs in an output-changing field,
    or if a live driver is already running this run.
    """
    rd = RunDir(run_dir)
    stored = read_stored_spec(run_dir)
    if stored is not None:
        field = output_changing_difference(stored, spec)
        if field is not None:
            raise SpecError(
                field,
                f"differs from the spec run {run_dir.name} was started with; resume needs the same value",
            )
        pid = driver_alive(rd)
        if pid is not None:
            raise SpecError("run_id", f"run {run_dir.name} is already running (driver pid {pid})")
        return True
    write_new_run_dir(RunLayout(run_dir), spec, exist_ok=True)
    return False


def write_new_run_dir(layout: RunLayout, spec: RunSpec, *, exist_ok: bool = False) -> None:
    """Create a run's directory and write the spec it is started with (its only writer)."""
    layout.root.mkdir(parents=True, exist_ok=exist_ok)
    atomic_write_bytes(layout.spec, dump_spec(spec).encode())


def check_prompt_fingerprints(
    layout: RunLayout, stages: Mapping[str, Stage[Any, Any]], *, allow_change: bool = False
) -> list[str]:
    """Compare the stages' prompt fingerprints with those the run was started with.

    A first session records them. A resumed session whose stage prompts changed is refused
    (SpecError naming the stage), because its new units would mix with the old ones
    unmarked; with ``allow_change`` the new fingerprints are recorded and the changed stage
    names returned (every record carries its ``prompt_fingerprint``, so new units are marked).
    """
    current = {name: stage.prompt_fingerprint for name, stage in stages.items()}
    stored: dict[str, str] = {}
    if layout.prompts.exists():
        stored = json.loads(layout.prompts.read_text(encoding="utf-8"))
    changed = [name for name, fp in current.items() if name in stored and stored[name] != fp]
    if changed and not allow_change:
        name = changed[0]
        raise SpecError(
            f"stages.{name}",
            f"the {name} prompts changed since run {layout.run_id} started (fingerprint {stored[name]} -> "
            f"{current[name]}); resume with --allow-prompt-change to continue with the new prompts "
            "(new records are marked by their prompt_fingerprint), or start a new run",
        )
    if changed or set(current) - set(stored):
        history = {**stored, **current}
        atomic_write_bytes(layout.prompts, json.dumps(history, indent=2, sort_keys=True).encode())
    return changed
