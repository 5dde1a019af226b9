"""``tissue-oracle segment``: find the tissue in slides under a policy, with every call audited.

Writes ``OUT/<slide>/`` per slide and ``OUT/audit.duckdb`` for the run. Exits 0 when at least
one slide was segmented (failed slides are listed), 1 when every slide failed, 2 on a usage or
configuration error. Heavy imports wait inside the command so ``--help`` stays fast.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from tissue_oracle.agent.run_settings import RunSettings
    from tissue_oracle.agent.runs import RunResult
    from tissue_oracle.policies.policy import Policy

SpecOption = Annotated[str | None, typer.Option(help="Backend spec for this role, overriding the policy.")]


def build_policy(
    policy: str,
    *,
    max_usd: float | None,
    max_calls: int | None,
    self_hosted: bool = False,
    planner: str | None = None,
    patch_size: int | None = None,
) -> Policy:
    """The named or given policy with the command line's run caps (and planner) applied;
    ``self_hosted`` prices every ``openai:`` model at $0 (the user's own server), and
    ``patch_size`` sets the grid (``classify.patch_size``)."""
    from tissue_oracle.policies.policy import load_policy

    loaded = load_policy(policy)
    updates: dict[str, Any] = {}
    if max_usd is not None:
        updates["budgets.run.usd"] = max_usd
    if max_calls is not None:
        updates["budgets.run.calls"] = max_calls
    if self_hosted:
        models = loaded.model_dump(mode="json")["models"]
        updates["models"] = {**models, "openai:*": {**models.get("openai:*", {}), "price": "self-hosted"}}
    if planner:
        updates["roles.planner"] = planner.strip()
    if patch_size is not None:
        updates["classify.patch_size"] = patch_size
    return loaded.with_updates(updates) if updates else loaded


def run_segment(
    paths: list[str],
    settings: RunSettings,
    *,
    overrides: dict[str, str | None],
    base_urls: list[str] | None = None,
    show_progress: bool = True,
) -> RunResult:
    """Open the store, build the oracles, segment every slide (here, or on Dask workers when
    ``settings.distributed``), then write the escalation queue and ``report.html``."""
    from tissue_oracle.agent.cmd_report import write_run_outputs
    from tissue_oracle.agent.oracle_setup import build_oracles, parse_base_urls
    from tissue_oracle.agent.run_progress import RunProgress
    from tissue_oracle.agent.run_settings import RunDeps
    from tissue_oracle.agent.runs import expand_paths, run_slides
    from tissue_oracle.agent.safe_text import plain
    from tissue_oracle.store.audit_store import AuditStore

    def skipped(problem: object) -> None:
        typer.secho(f"skipped input {plain(problem)}", err=True, fg="yellow")

    slides = expand_paths(paths, on_problem=skipped)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    urls = parse_base_urls(base_urls)
    cap = settings.policy.budgets.run.usd
    # The run's store opens first: a replay source that is the same file then shares it.
    with AuditStore.open(settings.out_dir / "audit.duckdb") as store:
        # Built here in both modes, so a bad spec or a missing price fails before any slide.
        oracles = build_oracles(settings.policy, overrides=overrides, base_urls=urls)  # type: ignore[arg-type]
        for note in oracles.notes:
            typer.secho(f"note: {plain(note)}", err=True, fg="yellow")
        typer.secho(f"caps in force: {settings.policy.budgets.describe()}", err=True)
        planner = _planner(settings, urls)
        deps = RunDeps.for_run(settings, oracles=oracles, store=store, planner=planner)

        async def main() -> RunResult:
            try:
                if settings.distributed:
                    return await asyncio.to_thread(_on_dask, slides, settings, store, overrides, urls, bar)
                return await run_slides(slides, settings, deps)
            finally:
                await oracles.aclose()
                if planner is not None:
                    await planner.aclose()

        with RunProgress(store, settings.run_id, len(slides), usd_cap=cap, enabled=show_progress) as bar:
            result = asyncio.run(main())
        write_run_outputs(settings.out_dir, store)
        return result


def _planner(settings: RunSettings, base_urls: dict[str, str]) -> Any:
    """The LLM planner the policy names (``roles.planner``, or ``--planner``), or None."""
    policy = settings.policy
    if not policy.roles.planner:
        return None
    from tissue_oracle.agent.planned_slide import LivePlanner
    from tissue_oracle.agent.planner import build_planner_model
    from tissue_oracle.agent.planner_guard import check_planner_policy
    from tissue_oracle.tools.errors import ConfigError

    if settings.distributed:
        raise ConfigError(
            "the planner runs in this process only: drop --planner (roles.planner) or --workers/--scheduler."
        )
    check_planner_policy(policy)
    return LivePlanner(model=build_planner_model(policy.roles.planner, policy=policy, base_urls=base_urls))


def _on_dask(
    slides: list[Path],
    settings: RunSettings,
    store: Any,
    overrides: dict[str, Any],
    urls: dict[str, str],
    bar: Any,
) -> RunResult:
    from tissue_oracle.agent.distributed_run import run_distributed

    return run_distributed(slides, settings, store, overrides=overrides, base_urls=urls, on_merge=bar.refresh)  # type: ignore[arg-type]


def print_result(result: RunResult) -> None:
    """One row per slide, then where the outputs and the audit store are."""
    from rich.table import Table

    from tissue_oracle.agent.console import make_console
    from tissue_oracle.agent.safe_text import cell

    table = Table(title=f"run {result.run_id}")
    for column in (
        "slide",
        "status",
        "labelled as",
        "regions",
        "refined",
        "calls",
        "naive",
        "USD",
        "s",
        "notes",
    ):
        table.add_column(column, overflow="fold")
    for o in result.outcomes:
        s = o.summary
        if s is None:
            notes = "; ".join(filter(None, [o.error, o.note]))
            table.add_row(*map(cell, (o.slide_id, o.status, "", "", "", "", "", "", "", notes)))
            continue
        table.add_row(*map(cell, (
            o.slide_id, o.status, s.labelled_as, str(len(s.regions)), str(s.refinements), str(s.totals.calls),
            str(s.patches.naive_calls), f"{s.totals.usd:.4f}", f"{s.seconds:.1f}",
            "; ".join(filter(None, [", ".join(s.flags), o.note])),
        )))  # fmt: skip
    console = make_console()
    console.print(table)
    for o in result.outcomes:  # out-of-scope slides say why, never a silent 0%; so do coarse grids
        s = o.summary
        if s is None or not any(f.startswith("out_of_scope_") or f == "coarse_grid" for f in s.flags):
            continue
        for reason in s.reasons:
            if not reason.startswith("region "):  # escalated regions are in escalations.csv
                console.print(cell(f"{o.slide_id}: {reason}"))
    store_path = result.out_dir / "audit.duckdb"
    console.print(cell(f"outputs in {str(result.out_dir)!r}; audit store {str(store_path)!r}"))


def segment(
    paths: Annotated[list[str], typer.Argument(help="Slide files, folders of slides, or globs.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (one sub-folder per slide).")],
    policy: Annotated[str, typer.Option(help="'paper', 'default', or a policy YAML file.")] = "default",
    oracle: SpecOption = None,
    reviewer: SpecOption = None,
    classifier: SpecOption = None,
    planner: Annotated[
        str | None,
        typer.Option(
            help="An LLM ('openai:MODEL' with tool calling, 'gemini:MODEL') that drives the stages."
        ),
    ] = None,
    base_url: Annotated[
        list[str] | None,
        typer.Option(
            help="OpenAI-compatible endpoint (vLLM) for openai: specs; 'gemini=URL' for Gemini (else "
            "GOOGLE_GEMINI_BASE_URL or Google)."
        ),
    ] = None,
    max_usd: Annotated[float | None, typer.Option(help="Hard cap on the run's cost in USD.")] = None,
    max_calls: Annotated[int | None, typer.Option(help="Hard cap on the run's oracle calls.")] = None,
    self_hosted: Annotated[
        bool, typer.Option("--self-hosted", help="openai: models run on your own server: price them $0.")
    ] = False,
    mpp: Annotated[
        float | None, typer.Option(help="Microns per pixel, for slides that don't record it.")
    ] = None,
    patch_size: Annotated[
        int | None,
        typer.Option(
            help="Grid patch side in level-0 pixels (the policy's classify.patch_size, 512 by default); "
            "smaller for tiles.",
        ),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Ask again instead of answering from the store.")
    ] = False,
    run_id: Annotated[
        str | None, typer.Option(help="Resume this run: slides it finished are skipped.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Segment this many slides at once on a local Dask cluster.")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Run on an existing Dask cluster (tcp://host:8786); docs/scale.md.")
    ] = None,
) -> None:
    """Segment the tissue in slides: boxes, coarse mask, patch labels, review and Auto-context."""
    from tissue_oracle.agent.run_settings import RunSettings
    from tissue_oracle.agent.runs import new_run_id
    from tissue_oracle.tools.errors import TissueOracleError

    try:
        settings = RunSettings(
            run_id=run_id or new_run_id(),
            policy=build_policy(
                policy,
                max_usd=max_usd,
                max_calls=max_calls,
                self_hosted=self_hosted,
                planner=planner,
                patch_size=patch_size,
            ),
            out_dir=out,
            use_cache=not no_cache,
            mpp=mpp,
            workers=workers,
            scheduler=scheduler,
        )
        result = run_segment(
            paths,
            settings,
            overrides={"oracle": oracle, "reviewer": reviewer, "classifier": classifier},
            base_urls=base_url,
        )
    except TissueOracleError as exc:
        from tissue_oracle.agent.safe_text import plain

        typer.secho(f"error: {plain(exc)}", err=True, fg="red")
        raise typer.Exit(2) from exc
    print_result(result)
    if result.all_failed:
        typer.secho("every slide failed; see the notes above.", err=True, fg="red")
        raise typer.Exit(1)
    if result.none_as_asked:
        typer.secho(
            "no slide got VLM labels: every VLM patch question failed or was not allowed, so only the "
            "coarse colour mask labelled them ('labelled as' above). Check the key, endpoint and caps.",
            err=True, fg="red",
        )  # fmt: skip
        raise typer.Exit(1)
