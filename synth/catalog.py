"""DuckDB over a run's shards: per-stage statistics, ad-hoc SQL, and a persistent catalog.

Only files named in the manifest are read, so an orphan left by a killed writer never
shows up in a count. ``agentcpt stats`` uses an in-memory DuckDB with absolute paths;
``agentcpt catalog`` writes ``runs/ID/catalog.duckdb`` whose views use paths relative to
the directory that holds the output dir (``runs/ID/shards/...``), so that
``duckdb runs/ID/catalog.duckdb`` browses the run from there (DuckDB resolves relative
paths against the current directory, not the database file).

Every shard is verified against its manifest sha256 before a view names it
(``ShardStore.verified_path``), so a corrupt file is an error naming it, never silently
different rows. Connections that run SQL a user typed (``agentcpt stats --sql``) have DuckDB's
file system access switched off except for the run's own shards (``restrict_file_access``):
a query cannot read ``/etc/passwd``, write files, attach databases or install extensions,
unless ``--allow-external`` is given.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
from pydantic import BaseModel, Field

from synth.errors import SpecError
from synth.layout import RunLayout, validate_run_id
from synth.records import FAILURE_SCHEMA, RECORD_TYPES
from synth.runstate import LLMUsage, RunDir, RunStatus
from synth.shards import ShardStore
from synth.stages import get_stage, stage_names
from synth.stages.corpus import CorpusSummaryRow, MixtureReport, mixture_report


class StageStats(BaseModel):
    stage: str
    files: int = 0
    rows: int = 0
    bytes: int = 0
    failed: int = 0
    accepted: int | None = Field(None, description="records with a positive verdict (planning accepted, reasoning correct, rollout/decision outcome correct)")
    rejected: int | None = Field(None, description="records with a negative verdict")
    acceptance_rate: float | None = None
    llm_prompt_tokens: int = 0
    llm_completion_tokens: int = 0
    corpus_tokens: int | None = Field(None, description="sum of n_tokens (corpus stage)")


class BreakdownRow(BaseModel):
    key: str
    count: int
    share: float


class RunStats(BaseModel):
    run_id: str
    status: RunStatus | None = None
    stages: list[StageStats]
    planning_reasons: list[BreakdownRow] = Field(default_factory=list, description="planning records by judge reason")
    reasoning_decided_by: list[BreakdownRow] = Field(default_factory=list, description="reasoning verdicts by what decided them")
    failures_by_kind: dict[str, dict[str, int]] = Field(default_factory=dict, description="stage -> error kind -> count")
    corpus_tokens: list[dict[str, int | str]] = Field(default_factory=list, description="tokens per kind and CPT stage")
    llm: dict[str, LLMUsage] = Field(default_factory=dict)
    cpt_mixture: MixtureReport | None = Field(
        None, description="tokens per CPT stage and kind against the spec's target shares, with warnings"
    )


# ---------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _create_view(con: duckdb.DuckDBPyConnection, name: str, paths: list[str], schema: pa.Schema) -> None:
    if paths:
        con.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM read_parquet({_sql_list(paths)})')
    else:
        # An empty stage still gets a view with its columns, so queries over it return 0 rows.
        con.register(f"__empty_{name}", schema.empty_table())
        con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM "__empty_{name}"')
        con.unregister(f"__empty_{name}")


def restrict_file_access(con: duckdb.DuckDBPyConnection, allowed_paths: list[str]) -> None:
    """Switch DuckDB's file system access off for ``con``, except reading ``allowed_paths``.

    Also locks the configuration, so SQL run later on ``con`` cannot switch it back on. After
    this, ``read_csv('/etc/passwd')``, ``COPY … TO``, ``ATTACH`` and ``INSTALL`` are refused.
    """
    if allowed_paths:
        con.execute(f"SET allowed_paths = {_sql_list(allowed_paths)}")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def connect_run(
    run_dir: Path,
    con: duckdb.DuckDBPyConnection | None = None,
    base: Path | None = None,
    *,
    restrict: bool = False,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view per stage, `<stage>_failed` per stage, and `manifest`.

    Paths are absolute unless ``base`` is given, in which case they are relative to it. Every
    file is verified against the manifest first (``CorruptShardError`` names a bad one).
    ``restrict`` leaves the connection able to read the run's shards and nothing else.
    """
    con = con or duckdb.connect()
    store = ShardStore(run_dir)
    rows = store.manifest_rows()
    verified = {r.path: str(store.verified_path(r).resolve()) for r in rows}

    def rel(path: str) -> str:
        full = verified[path]
        return str(Path(full).relative_to(base.resolve())) if base is not None else full

    for stage in stage_names():
        rec = [rel(r.path) for r in rows if r.stage == stage and r.kind == "records"]
        fail = [rel(r.path) for r in rows if r.stage == stage and r.kind == "failed"]
        _create_view(con, stage, rec, RECORD_TYPES[stage].arrow_schema())
        _create_view(con, f"{stage}_failed", fail, FAILURE_SCHEMA)
    con.register("__manifest", store.manifest_table())
    con.execute('CREATE OR REPLACE TABLE "manifest" AS SELECT * FROM "__manifest"')
    con.unregister("__manifest")
    if restrict:
        restrict_file_access(con, list(verified.values()))
    return con


def run_dir_for(run_id: str, output_dir: str | Path = "runs") -> Path:
    """The directory of run ``run_id``; SpecError (exit 2) when it is not a run."""
    validate_run_id(run_id)
    path = Path(output_dir) / run_id
    if not RunLayout(path).is_run():
        raise SpecError("run_id", f"no run {run_id!r} under {output_dir}/")
    return path


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------

def _breakdown(con: duckdb.DuckDBPyConnection, sql: str) -> list[BreakdownRow]:
    rows = con.execute(sql).fetchall()
    total = sum(n for _, n in rows) or 1
    return [BreakdownRow(key=str(k), count=int(n), share=round(n / total, 4)) for k, n in rows]


def run_stats(run_dir: str | Path) -> RunStats:
    """Per-stage files/rows/bytes/failures/verdicts/tokens of a run, read through DuckDB."""
    run_dir = Path(run_dir)
    store = ShardStore(run_dir)
    manifest = store.manifest_rows()
    progress = RunDir(run_dir).read_progress()
    con = connect_run(run_dir, restrict=True)
    out: list[StageStats] = []
    for stage in stage_names():
        files = [r for r in manifest if r.stage == stage]
        s = StageStats(
            stage=stage,
            files=sum(1 for r in files if r.kind == "records"),
            rows=sum(r.rows for r in files if r.kind == "records"),
            bytes=sum(r.bytes for r in files),
            failed=sum(r.rows for r in files if r.kind == "failed"),
        )
        verdict = get_stage(stage).verdict  # each stage says what "accepted" means for it
        if verdict is not None and s.rows:
            a, r = con.execute(
                f"SELECT count(*) FILTER (WHERE {verdict.accepted_sql}), "
                f"count(*) FILTER (WHERE {verdict.rejected_sql}) FROM {stage}"
            ).fetchone()
            s.accepted, s.rejected = int(a), int(r)
            s.acceptance_rate = round(a / s.rows, 4)
        if stage == "corpus":
            s.corpus_tokens = int(con.execute("SELECT coalesce(sum(n_tokens), 0) FROM corpus").fetchone()[0])
        usage = progress.stages.get(stage)
        if usage is not None:
            s.llm_prompt_tokens = usage.llm.prompt_tokens
            s.llm_completion_tokens = usage.llm.completion_tokens
        out.append(s)

    failures: dict[str, dict[str, int]] = {}
    for stage in stage_names():
        for kind, n in con.execute(
            f"SELECT error_kind, count(*) FROM {stage}_failed GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall():
            failures.setdefault(stage, {})[kind] = int(n)

    corpus_tokens = [
        {"kind": k, "cpt_stage": int(cs), "records": int(n), "tokens": int(t)}
        for k, cs, n, t in con.execute(
            "SELECT kind, cpt_stage, count(*), coalesce(sum(n_tokens), 0) FROM corpus GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
    ]
    stats = RunStats(
        run_id=run_dir.name,
        status=RunDir(run_dir).read_status(),
        stages=out,
        planning_reasons=_breakdown(con, "SELECT reason, count(*) FROM planning GROUP BY 1 ORDER BY 2 DESC"),
        reasoning_decided_by=_breakdown(
            con,
            "SELECT coalesce(decided_by, 'none') || ':' || CASE WHEN correct THEN 'correct' ELSE 'incorrect' END, "
            "count(*) FROM reasoning GROUP BY 1 ORDER BY 2 DESC",
        ),
        failures_by_kind=failures,
        corpus_tokens=corpus_tokens,
        llm={k: v.llm for k, v in progress.stages.items()},
        cpt_mixture=_cpt_mixture(run_dir, corpus_tokens),
    )
    con.close()
    return stats


def _cpt_mixture(run_dir: Path, corpus_tokens: list[dict[str, int | str]]) -> MixtureReport | None:
    """The corpus mixture against the run spec's targets (None without a corpus stage)."""
    from synth.spec import load_spec

    layout = RunLayout(run_dir)
    try:
        cfg = load_spec(layout.spec).stages.corpus if layout.spec.is_file() else None
    except SpecError:  # a spec an older version wrote
        cfg = None
    if cfg is None:
        return None
    return mixture_report([CorpusSummaryRow.model_validate(row) for row in corpus_tokens], cfg)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def print_stats(run_dir: str | Path, file=None) -> RunStats:
    """Print the stats tables of a run (rich tables; plain text when not a TTY)."""
    from rich.console import Console
    from rich.table import Table

    stats = run_stats(run_dir)
    console = Console(file=file or sys.stdout, width=120)
    t = Table(title=f"run {stats.run_id}" + (f" — {stats.status.state}" if stats.status else ""))
    for col in ("stage", "files", "rows", "failed", "accepted", "rejected", "accept %", "LLM tokens", "bytes"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for s in stats.stages:
        if not (s.files or s.failed):
            continue
        t.add_row(
            s.stage,
            str(s.files),
            str(s.rows),
            str(s.failed),
            "" if s.accepted is None else str(s.accepted),
            "" if s.rejected is None else str(s.rejected),
            "" if s.acceptance_rate is None else f"{100 * s.acceptance_rate:.1f}",
            str(s.llm_prompt_tokens + s.llm_completion_tokens) if (s.llm_prompt_tokens or s.llm_completion_tokens) else "",
            _fmt_bytes(s.bytes),
        )
    console.print(t)
    if stats.planning_reasons:
        pt = Table(title="planning: judge verdicts by reason")
        for col in ("reason", "records", "share %"):
            pt.add_column(col)
        for row in stats.planning_reasons:
            pt.add_row(row.key, str(row.count), f"{100 * row.share:.1f}")
        console.print(pt)
    if stats.reasoning_decided_by:
        rt = Table(title="reasoning: correctness by decider")
        for col in ("decided_by:verdict", "records", "share %"):
            rt.add_column(col)
        for row in stats.reasoning_decided_by:
            rt.add_row(row.key, str(row.count), f"{100 * row.share:.1f}")
        console.print(rt)
    if stats.corpus_tokens:
        ct = Table(title="corpus: tokens per kind and CPT stage")
        for col in ("kind", "cpt_stage", "records", "tokens"):
            ct.add_column(col)
        for row in stats.corpus_tokens:
            ct.add_row(str(row["kind"]), str(row["cpt_stage"]), str(row["records"]), str(row["tokens"]))
        console.print(ct)
    if stats.cpt_mixture is not None and stats.cpt_mixture.total_tokens:
        mt = Table(title="corpus: CPT stages against their target shares")
        for col in ("cpt_stage", "tokens", "share %", "target %", "replay %", "tokens per kind"):
            mt.add_column(col)
        for st in stats.cpt_mixture.stages:
            kinds = ", ".join(f"{k} {v}" for k, v in st.kinds.items())
            mt.add_row(str(st.cpt_stage), str(st.tokens), f"{100 * st.share:.1f}", f"{100 * st.target_share:.1f}",
                       f"{100 * st.replay_share:.0f}", kinds)  # fmt: skip
        console.print(mt)
        for warning in stats.cpt_mixture.warnings:
            console.print(f"warning: {warning}")
    if stats.failures_by_kind:
        ft = Table(title="failed ledger by kind")
        for col in ("stage", "error kind", "rows"):
            ft.add_column(col)
        for stage, kinds in stats.failures_by_kind.items():
            for kind, n in kinds.items():
                ft.add_row(stage, kind, str(n))
        console.print(ft)
    for line in truncation_hints(Path(run_dir)):
        console.print(line)
    return stats


def truncation_hints(run_dir: Path) -> list[str]:
    """One line per stage whose replies were cut by the token cap, naming the setting to raise."""
    from synth.spec import load_spec, truncation_advice

    layout = RunLayout(run_dir)
    if not layout.spec.exists():
        return []
    con = connect_run(run_dir)
    try:
        cut = {
            stage: [m for (m,) in con.execute(
                f"SELECT message FROM \"{stage}_failed\" WHERE error_kind = 'truncated'"
            ).fetchall()]
            for stage in stage_names()
        }  # fmt: skip
    finally:
        con.close()
    try:
        spec = load_spec(layout.spec)
    except SpecError:  # a spec an older version wrote: say what, if not which setting
        spec = None
    return [
        f"{stage}: {len(messages)} replies cut by the token cap (truncated): "
        + (truncation_advice(spec, stage, messages) if spec is not None else "raise the stage's completion cap")
        for stage, messages in cut.items()
        if messages
    ]


# ---------------------------------------------------------------------------
# CLI commands
# ---------------------------------------------------------------------------


def stats_command(
    run_id: str, sql: str | None = None, output_dir: str = "runs", allow_external: bool = False
) -> int:
    """``agentcpt stats``: the stats tables, or ``--sql`` over the run's views.

    The query runs with DuckDB's file system access off (only the run's shards readable)
    unless ``allow_external`` (``--allow-external``), the operator's explicit choice.
    """
    run_dir = run_dir_for(run_id, output_dir)
    if sql is None:
        print_stats(run_dir)
        return 0
    con = connect_run(run_dir, restrict=not allow_external)
    try:
        rel = con.sql(sql)
    except duckdb.Error as err:
        message = str(err).splitlines()[0]
        if isinstance(err, duckdb.CatalogException):  # e.g. a misspelt view: say which there are
            views = sorted({name for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()})
            message += f"; the views are: {', '.join(views)}"
        raise SpecError("--sql", message) from None
    if rel is None:
        return 0
    rel.show(max_width=200, max_rows=200)
    return 0


def write_catalog(run_dir: str | Path) -> Path:
    """Write ``catalog.duckdb`` (atomically) with views over paths relative to the output dir's parent."""
    run_dir = Path(run_dir).resolve()
    base = run_dir.parent.parent
    target = RunLayout(run_dir).catalog
    tmp = run_dir / ".catalog.duckdb.tmp"
    tmp.unlink(missing_ok=True)
    # Views are bound when created: relative paths must resolve now, against `base`.
    con = duckdb.connect(str(tmp))
    try:
        con.execute(f"SET file_search_path = '{str(base).replace(chr(39), chr(39) * 2)}'")
        connect_run(run_dir, con=con, base=base)
    finally:
        con.close()
    os.replace(tmp, target)
    return target


def catalog_command(run_id: str, output_dir: str = "runs") -> int:
    path = write_catalog(run_dir_for(run_id, output_dir))
    print(f"wrote {path}")
    print(f"browse it from {path.parent.parent.parent}: duckdb {path.relative_to(path.parent.parent.parent)}")
    return 0
