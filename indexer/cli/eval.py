"""``medsearch eval``: leave-one-out retrieval (:mod:`indexer.eval.retrieval`) and, with
``eval zero-shot``, zero-shot classification (:mod:`indexer.eval.zero_shot`) against a
label: a sidecar CSV column or a DICOM attribute such as ``modality``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from indexer.cli.options import IndexOpt, ModelOpt, output_file

if TYPE_CHECKING:
    from indexer.eval.retrieval import Exclude, Progress, RetrievalReport
    from indexer.eval.zero_shot import ZeroShotReport

app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=True,
    help="Evaluate an index's embeddings against a label. `eval --index DIR --label COLUMN`: "
    "leave-one-out retrieval over every labelled item (precision@k, recall@k, mean average "
    "precision, overall and per label; exact inner product over the catalog's embeddings). "
    "`eval zero-shot`: zero-shot classification with text prompts.",
)


class ExcludeChoice(StrEnum):
    none = "none"
    same_study = "same-study"
    same_patient = "same-patient"


_LABEL_HELP = "a sidecar CSV column, or a DICOM attribute (modality, body_part_examined, ...)"
JsonOpt = Annotated[bool, typer.Option("--json", help="print the report as JSON")]
PlotOpt = Annotated[Path | None, typer.Option(help="draw a PNG (needs the plot extra)")]


@app.callback()
def retrieval(
    ctx: typer.Context,
    index: Annotated[Path | None, typer.Option(help="index directory")] = None,
    label: Annotated[str | None, typer.Option(help=_LABEL_HELP)] = None,
    k: Annotated[str, typer.Option("--k", help="cut-offs, comma-separated")] = "1,5,10",
    exclude: Annotated[
        ExcludeChoice, typer.Option(help="also leave out the items of the query's study or patient")
    ] = ExcludeChoice.none,
    ap_depth: Annotated[
        int | None, typer.Option(min=1, help="rank only the top N for AP (default: all)")
    ] = None,
    queries: Annotated[
        int | None, typer.Option(min=1, help="evaluate a random sample of N queries")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the --queries sample")] = 0,
    as_json: JsonOpt = False,
    plot: PlotOpt = None,
) -> None:
    """Leave-one-out retrieval over every labelled item: precision@k, recall@k and mean
    average precision, overall and per label (exact inner product over the catalog's
    embeddings; see indexer/eval/retrieval.py for the definitions)."""
    if ctx.invoked_subcommand is not None:
        return
    if index is None or label is None:
        raise typer.BadParameter("give --index and --label", param_hint="--index/--label")
    output_file(plot, "--plot")
    if plot is not None:
        from indexer.eval.plots import pyplot

        pyplot()  # matplotlib missing: say so now, not after the evaluation
    report = run_retrieval(
        index,
        label,
        ks=_ks(k),
        exclude=exclude.value,
        ap_depth=ap_depth,
        queries=queries,
        seed=seed,
        progress=not as_json,
    )
    if plot is not None:
        from indexer.eval.plots import plot_precision_curve

        plot_precision_curve(report, plot, title=f"precision@k by {label}")
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    _echo_retrieval(report)


@app.command("zero-shot")
def zero_shot(
    index: IndexOpt,
    label: Annotated[str, typer.Option(help=_LABEL_HELP)],
    prompts: Annotated[Path, typer.Option(help="CSV with the columns label,prompt")],
    model: ModelOpt,
    as_json: JsonOpt = False,
    plot: PlotOpt = None,
) -> None:
    """Zero-shot classification of the labelled items: accuracy, AUC per label and the
    confusion matrix of softmax(exp(logit_scale) * cosine) over the prompts' labels."""
    output_file(plot, "--plot")
    if plot is not None:
        from indexer.eval.plots import pyplot

        pyplot()
    report = run_zero_shot(index, label, prompts, model)
    if plot is not None:
        from indexer.eval.plots import plot_confusion

        plot_confusion(report, plot)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    _echo_zero_shot(report)


def run_retrieval(
    index: Path,
    label: str,
    *,
    ks: list[int],
    exclude: Exclude = "none",
    ap_depth: int | None = None,
    queries: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> RetrievalReport:
    from indexer.eval.dataset import group_codes, load_labelled
    from indexer.eval.retrieval import RetrievalReport, evaluate_retrieval
    from indexer.pipeline.runner import open_catalog

    start = time.perf_counter()
    catalog = open_catalog(index, read_only=True)
    try:
        data = load_labelled(catalog, label)
    finally:
        catalog.close()
    groups = None
    if exclude == "same-study":
        groups = group_codes(data.studies)
    elif exclude == "same-patient":
        groups = group_codes(data.patients)
    with _bar(len(data) if queries is None else min(queries, len(data)), progress) as step:
        scores = evaluate_retrieval(
            data.vectors,
            data.labels,
            groups=groups,
            ks=ks,
            ap_depth=ap_depth,
            queries=queries,
            seed=seed,
            progress=step,
        )
    return RetrievalReport(
        **scores.model_dump(),
        label=label,
        label_source=data.source,
        exclude=exclude,
        unlabelled=data.unlabelled,
        seconds=round(time.perf_counter() - start, 3),
    )


def run_zero_shot(index: Path, label: str, prompts_csv: Path, model: Path) -> ZeroShotReport:
    from indexer.cli.curate import read_prompts
    from indexer.encoders.zero_shot import index_encoder, prompt_label_vectors
    from indexer.eval.dataset import load_labelled
    from indexer.eval.zero_shot import ZeroShotReport, evaluate_zero_shot
    from indexer.pipeline.runner import open_catalog

    start = time.perf_counter()
    prompts = read_prompts(prompts_csv)
    catalog = open_catalog(index, read_only=True)
    try:
        binding = catalog.required_binding()
        data = load_labelled(catalog, label)
    finally:
        catalog.close()
    encoder = index_encoder(model, binding)
    classes, class_vectors = prompt_label_vectors(encoder, prompts)
    scores = evaluate_zero_shot(
        data.vectors, data.labels, classes, class_vectors, encoder.logit_scale
    )
    return ZeroShotReport(
        **scores.model_dump(),
        label=label,
        label_source=data.source,
        prompts=prompts,
        unlabelled=data.unlabelled,
        seconds=round(time.perf_counter() - start, 3),
    )


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise typer.BadParameter("comma-separated positive integers", param_hint="--k") from None
    if not ks or ks[0] < 1:
        raise typer.BadParameter("comma-separated positive integers", param_hint="--k")
    return ks


@contextmanager
def _bar(total: int, enabled: bool) -> Iterator[Progress]:
    import sys

    from rich.console import Console
    from rich.progress import Progress as RichProgress

    with RichProgress(
        console=Console(stderr=True), disable=not (enabled and sys.stderr.isatty())
    ) as bar:
        task = bar.add_task("queries", total=total)

        def step(done: int, _total: int) -> None:
            bar.update(task, completed=done)

        yield step


def _echo_retrieval(report: RetrievalReport) -> None:
    ks = report.k
    head = "".join(f"  P@{k:<5}" for k in ks) + "".join(f"  R@{k:<5}" for k in ks)
    typer.echo(
        f"{report.items} items labelled by {report.label} ({report.label_source}), "
        f"{report.unlabelled} without; exclude {report.exclude}; "
        f"{report.skipped_queries} queries without a relevant candidate skipped"
    )
    typer.echo(f"{'label':<24}{'queries':>8}  mAP    {head}")
    rows = [("(all)", report), *report.per_label.items()]
    for name, m in rows:
        values = [m.precision_at_k[k] for k in ks] + [m.recall_at_k[k] for k in ks]
        cells = "".join(f"  {v:<7.4f}" for v in values)
        typer.echo(f"{name[:24]:<24}{m.queries:>8}  {m.mean_average_precision:.4f} {cells}")
    if report.skipped_labels:
        typer.echo(f"labels with no scored query: {', '.join(report.skipped_labels)}")
    typer.echo(f"{report.seconds:.1f} s")


def _echo_zero_shot(report: ZeroShotReport) -> None:
    typer.echo(
        f"{report.items} items labelled by {report.label} ({report.label_source}); "
        f"accuracy {report.accuracy:.4f}"
    )
    width = max(8, *(len(name) for name in report.labels)) + 2
    typer.echo(f"{'label':<{width}}{'AUC':>8}{'recall':>8}   confusion (predicted ->)")
    for name, row in zip(report.labels, report.confusion, strict=True):
        auc = report.per_class_auc[name]
        recall = report.per_class_accuracy[name]
        auc_text = "-" if auc is None else f"{auc:.4f}"
        recall_text = "-" if recall is None else f"{recall:.4f}"
        counts = " ".join(f"{c:>6}" for c in row)
        typer.echo(f"{name:<{width}}{auc_text:>8}{recall_text:>8}   {counts}")
    if report.unmatched:
        left = ", ".join(f"{name} ({n})" for name, n in report.unmatched.items())
        typer.echo(f"left out (no prompts for their label): {left}")
