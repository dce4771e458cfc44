"""De-identify stage: recipe, pseudonyms, quarantine, release/ behind the leak gate.

For each readable DICOM image of a batch (``pending`` after inspect):

1. the plan (:mod:`.deidplan`): pseudonyms come from the identifier provider,
   one call per batch (entity = patient, item = study; one date shift per
   patient), and each output is named;
2. the recipe (PS3.15 Annex E by default) is applied to the header; pixel
   data is never decoded, only copied byte for byte (each file is read once)
   by the per-file engine, :mod:`.engine` (:func:`.engine.deidentify_file`).
   Three paths give the same bytes: the element cache (:mod:`.elementcache`:
   the header scanned as bytes, each distinct element of a study
   de-identified by the recipe engine once and remembered, the original pixel
   data element bytes appended) takes explicit VR little endian files; the
   rest have their header parsed from memory by pydicom and written by
   :mod:`.dicomwrite`; files with elements after the pixel data, deflated or
   odd ones take pydicom's read/save_as path;
3. the file is written to ``release/<entity>/<item>_<series>_<instance>.dcm``,
   or to ``phi/quarantine/<entity>/`` when the pixel screen flagged it; the
   recipe reports every original value it removed or changed
   (:attr:`.recipemodel.Changes.originals`), which, less the values still in the
   output, become the leak gate's values;
4. the ``cleaned`` and ``entities`` tables (through :mod:`.release`, their owner)
   and the PHI ``lookup`` table are written from the rows spooled as the
   workers produce them (:mod:`.deidtables`) and ``disposition.csv`` completed;
5. the leak gate scans every byte and file name of ``release/`` for every
   identifying value the recipe removed (using the pixel data spans recorded
   at write time, ``phi/deidentify/pixel_spans.json``, instead of parsing
   every header again).
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sendit_helpers.core import disposition, executors, memory
from sendit_helpers.core.disposition import Disposition, Row
from sendit_helpers.core.errors import BatchError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import typed
from sendit_helpers.deid import gatepolicy, leakgate
from sendit_helpers.pseudonyms.secret import load_site_secret
from sendit_helpers.stages import inspect, release
from sendit_helpers.stages.deidplan import FLAGGED_REASON, PLAN_COLUMNS, plan
from sendit_helpers.stages.deidtables import (
    SPOOL_CHUNK,
    parquet_head,
    spool_chunk,
    spooled_gate_values,
    spooled_written,
    write_cleaned,
    write_lookup,
)
from sendit_helpers.stages.engine import (
    Job,
    Outcome,
    WorkerConfig,
    Writer,
    deidentify_file,
    load_recipe,
    worker_config,
)


def run_chunk(jobs: list[Job], config: WorkerConfig) -> list[Outcome]:
    """De-identify a chunk of files in this process (a worker's task), in order.

    Files are written on a :class:`~.engine.Writer`'s thread while the next one is
    de-identified; every outcome is complete when this returns.
    """
    with Writer() as writer:
        return [deidentify_file(job, config, writer) for job in jobs]


def run_chunk_spooled(jobs: list[Job], config: WorkerConfig, spool: str) -> list[Outcome]:
    """:func:`run_chunk`, then its rows spooled to ``spool`` (:func:`spool_chunk`)."""
    return spool_chunk(run_chunk(jobs, config), Path(spool))


def run_jobs(
    jobs: Sequence[Job],
    config: WorkerConfig,
    *,
    workers: int = 1,
    progress: bool = True,
    executor: str = "local",
    scheduler: str = "",
    spool: Path | None = None,
) -> list[Outcome]:
    """De-identify many files, in order, on a process pool or Dask when ``workers`` > 1
    (see :func:`sendit_helpers.core.executors.map_chunks`).

    Parameters
    ----------
    jobs : sequence of Job
        The files to de-identify.
    config : WorkerConfig
        What every worker needs.
    workers, progress, executor, scheduler
        As :func:`sendit_helpers.core.executors.map_chunks`.
    spool : Path, optional
        A folder (shared with the workers) where each chunk's cleaned and
        lookup rows are written as it finishes (:func:`spool_chunk`); the
        outcomes returned then keep only what dispositions and the gate need,
        so memory does not grow with the batch.  None keeps every row in the
        outcomes.

    Returns
    -------
    list of Outcome
        One per job, in job order.
    """
    func = (
        partial(run_chunk, config=config)
        if spool is None
        else partial(run_chunk_spooled, config=config, spool=str(spool))
    )
    return executors.map_chunks(
        func,
        list(jobs),
        workers=workers,
        executor=executor,
        scheduler=scheduler,
        progress=progress,
        desc="deidentify",
        serial_below=32,
    )


# ------------------------------------------------------------------ the stage
@dataclass
class DeidResult:
    """Everything the de-identify stage produced for one batch."""

    layout: BatchLayout
    outcomes: list[Outcome]
    """One per job; spooled (:func:`spool_chunk`): their cleaned and lookup rows are in
    the tables written, not here."""
    entities: pd.DataFrame
    dispositions: pd.DataFrame
    gate: leakgate.GateReport

    @functools.cached_property
    def cleaned(self) -> pd.DataFrame:
        """The released images' table, ``release/cleaned.parquet``, read on first use."""
        return pd.read_parquet(self.layout.cleaned_table)

    def cleaned_head(self, n: int = 5) -> pd.DataFrame:
        """The first ``n`` rows of :attr:`cleaned`, read without the rest of the table.

        Parameters
        ----------
        n : int
            How many rows.

        Returns
        -------
        pandas.DataFrame
            The same as ``self.cleaned.head(n)``; the whole table is not read
            (nor kept) unless :attr:`cleaned` was read already.
        """
        if "cleaned" in self.__dict__:
            return self.cleaned.head(n)
        return parquet_head(self.layout.cleaned_table, n)

    @functools.cached_property
    def quarantined(self) -> pd.DataFrame:
        """The quarantined images' table (``phi/deidentify/quarantined.parquet``), read lazily."""
        return pd.read_parquet(self.layout.held_table)

    @property
    def counts(self) -> pd.Series:
        """Files per disposition."""
        return disposition.counts(self.dispositions)


def deidentify_batch(layout: BatchLayout, settings: Mapping[str, Any]) -> DeidResult:
    """Run the de-identify stage on one inspected batch.

    The stage does not run inspect: the pipeline (or
    :func:`sendit_helpers.run.upstream.deidentify`) makes it current first.  The
    leak gate then holds every file it finds an identifying value in
    (:func:`.release.hold_for_gate`); the rest of the batch is released.

    Raises
    ------
    BatchError
        When the batch's inspect outputs are missing.
    LeakError
        When the leak gate finds a value it cannot hold (in no image's file or
        row); the report (``phi/deidentify/leak_report.csv``) names file and field.
    """
    if not inspect.has_outputs(layout):
        raise BatchError(
            f"batch {layout.name} is not inspected yet: its inspect outputs "
            f"({layout.inspect_dir}) are missing; run `sendit inspect` "
            "first, or sendit_helpers.run.upstream.deidentify, which does"
        )
    files = inspect.load(layout, PLAN_COLUMNS)
    cfg = typed(settings)
    secret = load_site_secret(
        layout.work,
        {"SENDIT_SITE_SECRET": cfg.pseudonyms.site_secret}
        if cfg.pseudonyms.site_secret
        else os.environ,
    )
    work = plan(layout, settings, files, secret)
    del files
    memory.release_unused()
    config = worker_config(settings, secret)
    # Loaded here first: a malformed recipe fails the stage with its own message (file:line),
    # and its warnings show once, before any worker starts.
    load_recipe(config.recipe_files, config.include_default)
    release.clear_outputs(layout)
    spool = _fresh_spool(layout)
    with memory.gc_frozen():
        outcomes = run_jobs(
            work.jobs,
            config,
            workers=cfg.run.workers,
            progress=cfg.run.progress,
            executor=cfg.run.executor,
            scheduler=cfg.run.dask_scheduler,
            spool=spool,
        )
    return finish(layout, settings, outcomes, work.skipped)


def _fresh_spool(layout: BatchLayout) -> Path:
    """An empty ``phi/deidentify/spool/`` (PHI: cleaned and lookup rows until :func:`finish`)."""
    layout.deid_dir.mkdir(mode=0o700, exist_ok=True)
    spool = layout.deid_dir / "spool"
    shutil.rmtree(spool, ignore_errors=True)
    spool.mkdir(mode=0o700)
    return spool


def finish(
    layout: BatchLayout, settings: Mapping[str, Any], outcomes: list[Outcome], skipped: list[Row]
) -> DeidResult:
    """Write tables and dispositions, then run the leak gate.

    Outcomes that still hold their rows are spooled here first, a chunk at a
    time; the tables are then written part by part from the spool
    (``phi/deidentify/spool/``, removed afterwards), so the whole batch's rows
    are never in memory together.
    """
    layout.deid_dir.mkdir(mode=0o700, exist_ok=True)
    spool = layout.deid_dir / "spool"
    if any(not o.part for o in outcomes):
        outcomes = [
            slim
            for start in range(0, len(outcomes), SPOOL_CHUNK)
            for slim in spool_chunk(outcomes[start : start + SPOOL_CHUNK], spool)
        ]
    write_cleaned(outcomes, spool, layout.cleaned_table, released=True)
    write_cleaned(outcomes, spool, layout.held_table, released=False)
    write_lookup(outcomes, spool, layout.deid_dir / "lookup.parquet")
    values = spooled_gate_values(outcomes, spool, layout.name)
    cfg = typed(settings)
    entities = release.write_entities(layout, cfg.upload.agent)
    leakgate.save_values(layout, values)
    leakgate.save_spans(
        layout,
        {
            f"{o.job.entity_id}/{o.job.name}": o.pixel_span
            for o in outcomes
            if not o.error and o.pixel_span is not None
        },
    )
    rows = list(skipped)
    for o in outcomes:
        if o.error:
            rows.append(Row(o.job.source_path, Disposition.ERROR, o.error))
        elif o.job.quarantined:
            rows.append(
                Row(
                    o.job.source_path,
                    Disposition.QUARANTINED,
                    o.job.reason or FLAGGED_REASON,
                    o.job.name,
                )
            )
        else:
            rows.append(Row(o.job.source_path, Disposition.RELEASED, "", o.job.name))
    table = disposition.update(layout, rows)
    del rows
    memory.release_unused()
    policy = gatepolicy.policy_of_tables([layout.cleaned_table, layout.held_table])
    implementations = {o.implementation for o in outcomes if o.implementation and not o.error}
    if implementations:  # one file's creator UID is another's ImplementationClassUID
        policy = gatepolicy.Policy.of_values(policy.technical, policy.codes | implementations)
    gatepolicy.save_policy(layout, policy)
    (layout.deid_dir / "leak_report.csv").unlink(missing_ok=True)
    (layout.deid_dir / release.GATE_HELD_FILE).unlink(missing_ok=True)
    try:
        report = leakgate.run_gate(
            layout,
            values,
            workers=cfg.run.workers,
            policy=policy,
            hold=functools.partial(release.hold_for_gate, layout, settings),
            written=spooled_written(outcomes, spool),
        )
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    if report.held:
        table = disposition.read(layout)
        entities = pd.read_parquet(layout.entities_table)
    memory.release_unused()
    return DeidResult(layout, outcomes, entities, table, report)


#: The columns of :func:`quarantine_reasons` (before renaming), ``output_name`` from the
#: disposition table, the others from ``files.parquet``.
_REASON_COLUMNS = (
    "output_name",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "group",
    "label",
    "reason_screen",
)


def quarantine_reasons(result: DeidResult) -> pd.DataFrame:
    """Quarantined images with the screening rule that held them back."""
    table = result.dispositions[result.dispositions["disposition"] == str(Disposition.QUARANTINED)]
    files = _files_of(result.layout, table["source_path"], ["source_path", *_REASON_COLUMNS[1:]])
    # A batch of non-DICOM files only has an untyped (float) source_path in files.parquet.
    files["source_path"] = files["source_path"].astype(object)
    merged = table.astype({"source_path": object}).merge(files, on="source_path", how="left")
    return merged.reindex(columns=list(_REASON_COLUMNS)).rename(
        columns={"output_name": "item", "reason_screen": "rule"}
    )


def _files_of(layout: BatchLayout, sources: pd.Series, columns: Sequence[str]) -> pd.DataFrame:
    """The rows of ``files.parquet`` whose ``source_path`` is in ``sources``; ``columns`` only.

    Read a batch of rows at a time, so only the wanted rows are ever converted
    to pandas (the same rows, in the same order, as filtering the whole table).
    """
    source = pq.ParquetFile(layout.inspect_dir / "files.parquet")
    present = set(source.schema_arrow.names)
    wanted = [c for c in dict.fromkeys(columns) if c in present]
    keys = pa.array(sources.astype(object).tolist(), pa.string())
    batches = [
        batch.filter(pc.is_in(batch.column("source_path"), value_set=keys))
        for batch in source.iter_batches(batch_size=_FILE_ROWS, columns=wanted)
    ]
    schema = pa.schema([source.schema_arrow.field(c) for c in wanted], source.schema_arrow.metadata)
    rows: pd.DataFrame = pa.Table.from_batches(batches, schema=schema).to_pandas()
    return rows


#: Rows of ``files.parquet`` read at a time by :func:`_files_of`.
_FILE_ROWS = 1024


def gate_summary(result: DeidResult) -> pd.DataFrame:
    """The leak gate's outcome as a small table (counts only, never values)."""
    gate = result.gate
    return pd.DataFrame(
        [
            ("passed", gate.passed),
            ("files scanned in release/", gate.files),
            ("identifying values searched", gate.values_checked),
            ("values too short to search", gate.too_short),
            ("values the recipe's policy keeps (not searched)", gate.kept_by_policy),
            ("hits", len(gate.hits)),
            ("files held for review", len(gate.held)),
        ],
        columns=["item", "value"],
    )
