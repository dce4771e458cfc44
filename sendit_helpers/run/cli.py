"""The ``sendit`` command: one subcommand per stage, each running its notebook.

Examples
--------
::

    sendit inspect /data/export/study1 --work /data/work
    sendit deidentify /data/export/study1 --work /data/work --params site.yml --workers 2
    sendit run /data/export --work /data/work --set SEND_TO_ORTHANC=true
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from sendit_helpers import __version__
from sendit_helpers.core.errors import SenditError, SettingsError, one_line, os_error_line
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import load_settings, parse_override
from sendit_helpers.run import kernels
from sendit_helpers.run.runner import run_stage, warm_kernels
from sendit_helpers.run.stages import PIPELINE, STAGES, Stage

log = logging.getLogger("sendit")

#: What ``sendit --help`` says first (plain text: argparse prints it as it is).
DESCRIPTION = (
    "sendit: de-identify DICOM batches and send what may leave the site. Each command runs "
    "one stage's notebook with papermill and keeps the executed copy (with an HTML report) "
    "under WORK/<batch>/phi/notebooks/."
)
EXAMPLES = """examples:
  sendit inspect /data/export/study1 --work /data/work
  sendit deidentify /data/export/study1 --work /data/work --params site.yml --workers 2
  sendit review /data/export/study1 --work /data/work --decisions decisions.csv
  sendit run /data/export --work /data/work --set SEND_TO_ORTHANC=true
"""


def _plain(text: str, width: int = 78) -> str:
    """``text`` wrapped to ``width`` (lines that start with two spaces, commands, stay whole)."""
    lines = []
    for line in text.split("\n"):
        lines.append(line if line.startswith("  ") else textwrap.fill(line, width) if line else "")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per stage (help in plain text)."""
    plain = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="sendit", description=_plain(DESCRIPTION), epilog=EXAMPLES, formatter_class=plain
    )
    parser.add_argument("--version", action="version", version=f"sendit-notebooks {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for spec in STAGES.values():
        if not spec.command:
            continue
        cmd = sub.add_parser(
            str(spec.stage),
            help=spec.summary,
            description=_plain(spec.description()),
            formatter_class=plain,
        )
        _common(cmd, "BATCH_DIR", "batch folder(s): one study's DICOM files each")
        for option in spec.options:
            cmd.add_argument(option.flag, metavar=option.metavar, help=option.help)
    run = sub.add_parser(
        "run",
        help="run every stage on many batches",
        description=_plain(
            f"Run every stage ({', '.join(PIPELINE)}) on many batches.\n\n"
            "Executed notebooks: WORK/<batch>/phi/notebooks/; the run ends with a table of "
            "batches (status, stage, images released / held / waiting for review)."
        ),
        formatter_class=plain,
    )
    _common(run, "BATCH_OR_ROOT", "batch folders, or roots searched for batches")
    run.add_argument(
        "--force",
        action="store_true",
        help="re-run every stage, also those unchanged since their last success",
    )
    query = sub.add_parser(
        str(Stage.QUERY),
        help=STAGES[Stage.QUERY].summary,
        description=_plain(
            "Search the images uploaded so far (every batch) and print one row per image "
            "with the link to where it is stored, or write the rows with --out FILE (.csv or "
            ".parquet). Where it searches follows the upload settings: Datastore when "
            "SEND_TO_GOOGLE is on (links gs://BUCKET/...), Orthanc when SEND_TO_ORTHANC is on "
            "(links to ORTHANC_URL/instances/ID, never with credentials), else the local "
            "store's index under LOCAL_STORAGE_DIR or WORK/storage (links file://...). Code "
            "filters (sex, modality, body part) ignore case; --text matches series and study "
            "descriptions.\n\n"
            f"Notebook: notebooks/{Stage.QUERY.notebook} (same filters, with links that open "
            "and a chart)."
        ),
        formatter_class=plain,
    )
    query.epilog = (
        "examples:\n"
        "  sendit query --work /data/work --sex f --modality ct --age-min 40\n"
        "  sendit query --work /data/work --body-part chest --out chest.parquet"
    )
    query.add_argument("--work", required=True, type=Path, metavar="WORK_DIR", help="work folder")
    query.add_argument("--params", action="append", default=[], type=Path, metavar="FILE",
                       help="params YAML file; repeatable, later wins")  # fmt: skip
    query.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                       help="override one setting; repeatable")  # fmt: skip
    query.add_argument("--sex", metavar="CODE", help="PatientSex: F, M or O (any case)")
    query.add_argument("--modality", metavar="CODE", help="Modality, e.g. CT (any case)")
    query.add_argument("--body-part", metavar="CODE",
                       help="BodyPartExamined, e.g. CHEST (any case)")  # fmt: skip
    query.add_argument("--age-min", type=int, metavar="YEARS", help="youngest age, in years")
    query.add_argument("--age-max", type=int, metavar="YEARS", help="oldest age, in years")
    query.add_argument("--text", help="words in the series or study description (any case)")
    query.add_argument("--out", type=Path, metavar="FILE",
                       help="write the rows to FILE (.csv or .parquet), not print")  # fmt: skip
    run.epilog = (
        "Resumable: a stage unchanged since its last success (inputs, settings, notebook) is\n"
        "skipped. --workers N is split between batches and files: min(N, batches) batches at\n"
        "once, N // that processes for each batch's files."
    )
    return parser


def _common(cmd: argparse.ArgumentParser, metavar: str, text: str) -> None:
    cmd.add_argument("batches", nargs="+", metavar=metavar, type=Path, help=text)
    cmd.add_argument(
        "--work",
        required=True,
        type=Path,
        metavar="WORK_DIR",
        help="work folder (phi/ and release/ per batch)",
    )
    cmd.add_argument(
        "--params",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="params YAML file; repeatable, later wins",
    )
    cmd.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one setting; repeatable",
    )
    cmd.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes for per-file work (0 = one per core)",
    )
    cmd.add_argument("--executor", choices=("local", "dask"), help="where per-file work runs")
    cmd.add_argument(
        "--scheduler", metavar="ADDRESS", help="Dask scheduler address (with --executor dask)"
    )


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    """The settings overrides of parsed arguments: ``--set``, ``--workers``, ``--executor``,
    ``--scheduler`` and the stage's own options (``review --decisions``)."""
    overrides: dict[str, Any] = dict(parse_override(item) for item in args.set)
    if getattr(args, "workers", None) is not None:
        overrides["WORKERS"] = args.workers
    if getattr(args, "executor", None) is not None:
        overrides["EXECUTOR"] = args.executor
    if getattr(args, "scheduler", None) is not None:
        overrides["DASK_SCHEDULER"] = args.scheduler
    command = getattr(args, "command", "")
    for option in STAGES[Stage(command)].options if command in STAGES else ():
        value = getattr(args, option.flag.lstrip("-").replace("-", "_"), None)
        if value:
            overrides[option.setting] = str(Path(value).resolve()) if option.path else value
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sendit`` command; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="sendit: %(message)s", stream=sys.stderr)
    for chatty in ("papermill", "distributed"):  # a line per cell / per worker event otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        overrides = overrides_of(args)
        settings = load_settings(args.params, overrides)  # fail fast, before any notebook
        if args.command == Stage.QUERY:
            return _query(args, settings)
        if settings.run.executor == "local":
            # the first notebook's kernel starts (and imports) while this process imports
            kernels.prestart(args.work)
        if args.command == "run":
            from sendit_helpers.run.pipeline import run_batches

            return run_batches(args.batches, args.work, args.params, overrides, force=args.force)
        return _run_each(Stage(args.command), args.batches, args.work, args.params, overrides)
    except SenditError as exc:
        print(f"sendit: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sendit: error: {os_error_line(exc, near=args.work)}", file=sys.stderr)
        return 2
    finally:
        kernels.discard_spares()  # started ahead but not used (an error came first)


def _query(args: argparse.Namespace, settings: Any) -> int:
    from sendit_helpers.stages.query import find_images

    suffix = args.out.suffix.lower() if args.out is not None else ""
    if args.out is not None and suffix not in (".csv", ".parquet"):
        raise SettingsError(f"--out {args.out}: name a .csv or .parquet file")
    frame = find_images(
        settings, args.work, sex=args.sex, modality=args.modality, body_part=args.body_part,
        age_min=args.age_min, age_max=args.age_max, text=args.text,
    )  # fmt: skip
    if args.out is None:
        print(frame.to_string(index=False) if len(frame) else "no images match")
        return 0
    if suffix == ".parquet":
        frame.to_parquet(args.out, index=False)
    else:
        frame.to_csv(args.out, index=False)
    log.info("%d images written to %s", len(frame), args.out)
    return 0


def _run_each(
    stage: Stage,
    batches: Sequence[Path],
    work: Path,
    params: Sequence[Path],
    overrides: dict[str, Any],
) -> int:
    """Run ``stage`` on each batch, spread over the workers as ``sendit run`` spreads them.

    One batch runs here with the settings as given (its per-file work uses every worker,
    on Dask too).  Several batches are split like :func:`~sendit_helpers.run.pipeline.split_workers`
    splits them: ``min(WORKERS, batches)`` batches at once (threads of this process with
    ``--executor local``, one Dask task each with ``--executor dask``), each with the left-over
    workers for its files.  A batch that fails is reported and the others still run.

    Returns
    -------
    int
        0 when every batch succeeded, 1 when any failed.
    """
    from sendit_helpers.run.pipeline import split_workers

    settings = load_settings(params, overrides)
    executor, scheduler = settings.run.executor, settings.run.dask_scheduler
    slots, file_workers = split_workers(settings.run.workers, len(batches), executor, scheduler)
    inner = dict(overrides)
    if len(batches) > 1:
        inner.update({"WORKERS": file_workers, "EXECUTOR": "local", "DASK_SCHEDULER": ""})
        log.info(
            "%d batches, %d at a time (%s executor), %d worker process(es) per batch for files",
            len(batches),
            slots,
            executor,
            file_workers,
        )
    one = partial(run_stage_outcome, stage=stage, work=work, params=list(params), overrides=inner)
    if executor == "local":
        kernels.prestart(work, slots)  # the other threads' kernels start now, not when needed
    # one warm kernel per thread for every batch's notebook, not a cold start each
    with warm_kernels(work, enabled=executor == "local"):
        return _report(stage, batches, one, slots, executor, scheduler)


def _report(
    stage: Stage,
    batches: Sequence[Path],
    one: Any,
    slots: int,
    executor: str,
    scheduler: str,
) -> int:
    """Run ``one`` on every batch (:func:`_run_each`), say how each went; the exit status."""
    from sendit_helpers.core import executors

    outcomes: Iterable[tuple[int, StageOutcome | Exception]]
    if len(batches) == 1:
        outcomes = [(0, one(batches[0]))]
    else:
        outcomes = executors.run_each(
            one, batches, slots=slots, executor=executor, scheduler=scheduler, desc=str(stage)
        )
    failed = 0
    for _, outcome in outcomes:
        if not isinstance(outcome, StageOutcome):
            outcome = StageOutcome(error=str(outcome))
        if outcome.error:
            failed += 1
            print(f"sendit: error: {outcome.error}", file=sys.stderr)
            continue
        log.info(
            "%s done for batch %s%s; executed notebook: %s",
            stage,
            outcome.batch,
            f" ({outcome.note})" if outcome.note else "",
            outcome.notebook,
        )
        if outcome.waiting:
            log.warning("batch %s: %s", outcome.batch, outcome.waiting)
    if failed and len(batches) > 1:
        print(f"sendit: {failed} of {len(batches)} batch(es) failed", file=sys.stderr)
    return 1 if failed else 0


@dataclass(frozen=True)
class StageOutcome:
    """How one batch's stage went (picklable: it comes back from a thread or a Dask task)."""

    batch: str = ""
    notebook: str = ""
    error: str = ""
    """The one-line error (never an identifying value); empty on success."""
    note: str = ""
    """The batch's first file in error, if any, with where to look."""
    waiting: str = ""
    """How many images still wait for review (review and upload), if any."""


def run_stage_outcome(
    batch: Path,
    *,
    stage: Stage,
    work: Path,
    params: Sequence[Path],
    overrides: dict[str, Any],
) -> StageOutcome:
    """Run one stage on one batch and say how it went, never raising.

    Module-level and returning its one-line error rather than raising it, so a thread or a
    Dask worker can run it and the message reaches the command's output.
    """
    try:
        layout = BatchLayout.for_batch(batch, work)
        layout.check_source()
        output = _run_stamped(stage, layout, params, overrides)
    except SenditError as exc:
        return StageOutcome(error=str(exc))
    except OSError as exc:
        line = os_error_line(exc, near=Path(work).expanduser().resolve())
        return StageOutcome(error=f"batch {batch}: {line}")
    except Exception as exc:  # noqa: BLE001 - reported and counted; the other batches go on
        return StageOutcome(
            error=f"batch {batch}: {stage} failed unexpectedly ({one_line(exc)}); this is a "
            "bug: report it with the executed notebook under the batch's phi/notebooks/"
        )
    from sendit_helpers.core import disposition

    note = disposition.first_error(layout)
    waiting = _waiting(layout) if STAGES[stage].waiting else ""
    return StageOutcome(
        batch=layout.name,
        notebook=str(output),
        note=f"{note}; see {layout.disposition_csv}" if note else "",
        waiting=waiting,
    )


def _run_stamped(
    stage: Stage, layout: BatchLayout, params: Sequence[Path], overrides: dict[str, Any]
) -> Path:
    """Run one stage's notebook on one batch and stamp it as ``sendit run`` does.

    Under the batch lock (as ``sendit run``: no stage can rewrite release/ while another
    uploads it), the stamps of the stage and every later one are removed, the notebook
    runs, and the stage's stamp is written after it succeeded
    (:func:`~sendit_helpers.run.pipeline.write_stamp`), so a later ``sendit run`` skips
    what is current.  A stage outside the pipeline (query) has no stamp.
    """
    from sendit_helpers.run import pipeline

    if stage not in PIPELINE:
        return run_stage(stage, layout, params_files=params, overrides=overrides)
    settings = load_settings(params, overrides)
    with pipeline.batch_lock(layout, timeout=pipeline.LOCK_TIMEOUT):
        pipeline.clear_stamps(layout, stage)
        began = time.perf_counter()
        output = run_stage(stage, layout, params_files=params, overrides=overrides, lock=False)
        pipeline.write_stamp(layout, stage, settings, time.perf_counter() - began)
    return output


def _waiting(layout: BatchLayout) -> str:
    """How many images of the batch still wait for review (they are never uploaded), or ""."""
    from sendit_helpers.core import disposition

    if not layout.disposition_csv.exists():
        return ""
    table = disposition.read(layout, ["disposition", "reason"])
    if disposition.review_counts(table)[2]:
        return disposition.waiting_line(table)
    return ""


if __name__ == "__main__":
    raise SystemExit(main())
