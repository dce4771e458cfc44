"""De-identify stage: recipe, pseudonyms, quarantine, release/ behind the leak gate.

For each readable DICOM image of a batch (``pending`` after inspect):

1. pseudonyms come from the identifier provider, one call per batch
   (entity = patient, item = study; one date shift per patient);
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
   and the PHI ``lookup`` table are written and ``disposition.csv`` completed;
5. the leak gate scans every byte and file name of ``release/`` for every
   identifying value the recipe removed (using the pixel data spans recorded
   at write time, ``phi/deidentify/pixel_spans.json``, instead of parsing
   every header again).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydicom.filereader import read_file_meta_info

from sendit_helpers.core import disposition, executors, memory
from sendit_helpers.core.dicomio import READ_ERRORS
from sendit_helpers.core.disposition import Disposition, Row
from sendit_helpers.core.errors import BatchError
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import typed
from sendit_helpers.deid import leakgate
from sendit_helpers.deid.dateshift import shift_date
from sendit_helpers.pseudonyms.provider import StudyKey, make_provider
from sendit_helpers.pseudonyms.secret import load_site_secret
from sendit_helpers.pseudonyms.uids import UidMapper
from sendit_helpers.stages import inspect, release
from sendit_helpers.stages.engine import (
    Job,
    Outcome,
    WorkerConfig,
    deidentify_file,
    load_recipe,
    worker_config,
)

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_DOCUMENT = (
    "{kind}: a document of free text the recipe cannot clean; the profile empties it "
    "(EncapsulatedDocument (0042,0011), D) and the header is de-identified; held for review"
)
#: SOP classes whose content the recipe cannot clean (a document, a 3D model, vendor
#: raw data), with the disposition reason: their header is de-identified and the
#: file held in quarantine for a person to review.
OPAQUE_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.104.1": _DOCUMENT.format(kind="encapsulated PDF"),
    "1.2.840.10008.5.1.4.1.1.104.2": _DOCUMENT.format(kind="encapsulated CDA"),
    "1.2.840.10008.5.1.4.1.1.104.3": _DOCUMENT.format(kind="encapsulated STL model"),
    "1.2.840.10008.5.1.4.1.1.104.4": _DOCUMENT.format(kind="encapsulated OBJ model"),
    "1.2.840.10008.5.1.4.1.1.104.5": _DOCUMENT.format(kind="encapsulated MTL material"),
    "1.2.840.10008.5.1.4.1.1.66": (
        "raw data: vendor data the recipe cannot read (private elements removed, header "
        "de-identified); held for review"
    ),
}
#: The disposition reason of an image the pixel screen flagged.
FLAGGED_REASON = "pixel screen flagged possible burned-in PHI; awaiting review"


def run_chunk(jobs: list[Job], config: WorkerConfig) -> list[Outcome]:
    """De-identify a chunk of files in this process (a worker's task), in order."""
    return [deidentify_file(job, config) for job in jobs]


def run_chunk_spooled(jobs: list[Job], config: WorkerConfig, spool: str) -> list[Outcome]:
    """:func:`run_chunk`, then its rows spooled to ``spool`` (:func:`spool_chunk`)."""
    return spool_chunk([deidentify_file(job, config) for job in jobs], Path(spool))


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


# ------------------------------------------------------------------ planning
def _patient_key(row: Mapping[str, Any]) -> StudyKey:
    patient = (
        row["PatientID"] if isinstance(row["PatientID"], str) and row["PatientID"].strip() else ""
    )
    study = row["StudyInstanceUID"] if isinstance(row["StudyInstanceUID"], str) else ""
    accession = row["AccessionNumber"] if isinstance(row["AccessionNumber"], str) else ""
    date = row["StudyDate"] if isinstance(row["StudyDate"], str) else ""
    if not patient:
        patient = f"no-patient-id:{study or row['source_path']}"
    return StudyKey(patient, accession.strip() or study, date)


def _number(value: Any, fallback: int) -> int:
    return fallback if value is None or pd.isna(value) else int(value)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _modality(value: Any) -> str:
    """A Modality as a file-name part: letters and digits only, ``OT`` when there are none."""
    return "".join(c for c in _text(value).upper() if c.isascii() and c.isalnum())[:8] or "OT"


def _instance_part(row: Any, uid_map: UidMapper | None) -> str:
    """InstanceNumber, else a digest of the de-identified SOPInstanceUID (the object's own name)."""
    if row.InstanceNumber is not None and not pd.isna(row.InstanceNumber):
        return str(int(row.InstanceNumber))
    uid = _text(getattr(row, "SOPInstanceUID", None))
    if not uid or uid_map is None:
        return "x"  # no UID either: the suffix below keeps names unique
    return "u" + hashlib.sha256(uid_map(uid).encode("ascii")).hexdigest()[:10]


def _names(
    candidates: pd.DataFrame,
    codes: Mapping[str, tuple[str, str, int]],
    uid_map: UidMapper | None = None,
) -> dict[str, str]:
    """Unique names per source file, stable in source order.

    Images are ``<item>_<series>_<instance>.dcm``; objects without pixel data
    (SR, KOS, presentation states, RT plans and structure sets, waveforms)
    ``<item>_<Modality>_<series>_<instance>.dcm``, so they do not take an
    image's name.  A missing SeriesNumber is ``0``; a missing InstanceNumber is
    ``u`` + 10 hex digits of the SHA-256 of the de-identified SOPInstanceUID:
    the same object gets the same name whatever else the batch holds.  Names
    still equal get ``_2``, ``_3``... in source order.
    """
    names: dict[str, str] = {}
    taken: set[str] = set()
    pixels = "has_pixels" in candidates.columns
    for row in candidates.itertuples(index=False):
        source = str(row.source_path)
        _entity, item, _jitter = codes[source]
        series, instance = _number(row.SeriesNumber, 0), _instance_part(row, uid_map)
        if pixels and not bool(row.has_pixels):
            base = f"{item}_{_modality(getattr(row, 'Modality', None))}_{series}_{instance}"
        else:
            base = f"{item}_{series}_{instance}"
        name, n = f"{base}.dcm", 1
        while name in taken:
            n += 1
            name = f"{base}_{n}.dcm"
        taken.add(name)
        names[source] = name
    return names


#: The ``files.parquet`` columns :func:`plan` reads.
PLAN_COLUMNS = (
    "source_path",
    "SOPClassUID",
    "has_pixels",
    "flagged",
    "PatientID",
    "StudyInstanceUID",
    "AccessionNumber",
    "StudyDate",
    "SeriesNumber",
    "InstanceNumber",
    "PatientBirthDate",
    "SOPInstanceUID",
    "Modality",
)


@dataclass
class Plan:
    """The jobs of a batch, and the files it will not release with the reason."""

    jobs: list[Job]
    skipped: list[Row]


def plan(
    layout: BatchLayout, settings: Mapping[str, Any], files: pd.DataFrame, secret: bytes
) -> Plan:
    """Choose the files to de-identify, get pseudonyms and name the outputs."""
    table = disposition.read(layout, ["source_path", "disposition"]).set_index("source_path")
    dicom = files[files["source_path"].isin(table.index)]
    dicom = dicom[
        table.loc[dicom["source_path"], "disposition"]
        .isin(
            [
                str(Disposition.PENDING),
                str(Disposition.RELEASED),
                str(Disposition.QUARANTINED),
                str(Disposition.SKIPPED),
            ]
        )
        .to_numpy()
    ]
    sop_class = dicom["SOPClassUID"].map(_text)
    storable = (sop_class != "") & (sop_class != DICOMDIR_CLASS)
    skipped = [
        Row(p, Disposition.SKIPPED, _not_storable(p)) for p in dicom.loc[~storable, "source_path"]
    ]
    images = dicom[storable].sort_values("source_path")
    keys = {row.source_path: _patient_key(row._asdict()) for row in images.itertuples(index=False)}
    cfg = typed(settings)
    ids = cfg.pseudonyms
    provider = make_provider(
        ids.provider,
        secret=secret,
        prefix=ids.entity_prefix,
        crosswalk_csv=Path(ids.crosswalk_csv) if ids.crosswalk_csv else None,
        url=ids.url,
        id_source=ids.id_source,
        token=ids.token or None,
        timeout=ids.timeout,
        retries=ids.retries,
        max_jitter_days=cfg.deid.max_jitter_days,
    )
    pseudonyms = provider.pseudonymize(list(dict.fromkeys(keys.values()))) if keys else {}
    codes = {
        p: (pseudonyms[k].entity_id, pseudonyms[k].item_id, pseudonyms[k].jitter_days)
        for p, k in keys.items()
    }
    names = _names(images, codes, UidMapper(secret))
    quarantine = cfg.deid.quarantine_flagged
    jobs = []
    for row in images.itertuples(index=False):
        entity, item, jitter = codes[row.source_path]
        reason = OPAQUE_CLASSES.get(_text(row.SOPClassUID), "")
        if not reason and quarantine and bool(row.flagged) and bool(row.has_pixels):
            reason = FLAGGED_REASON
        root = layout.quarantine if reason else layout.release
        output = root / entity / names[row.source_path]
        jobs.append(
            Job(
                row.source_path,
                str(output),
                names[row.source_path],
                entity,
                item,
                jitter,
                bool(reason),
                shift_date(_text(getattr(row, "PatientBirthDate", None)), jitter),
                shift_date(_text(row.StudyDate), jitter),
                reason,
            )
        )
    return Plan(jobs, skipped)


def _not_storable(path: str) -> str:
    """The skip reason of a file without a storable SOP class (a DICOMDIR, a fragment)."""
    try:
        meta = read_file_meta_info(path)
    except READ_ERRORS:
        meta = None
    media = _text(str(meta.get("MediaStorageSOPClassUID", ""))) if meta is not None else ""
    if media == DICOMDIR_CLASS or Path(path).name.upper().startswith("DICOMDIR"):
        return "media directory (DICOMDIR), an index of the other files; not released"
    return (
        "no SOPClassUID (0008,0016): a data set without a SOP class is not a storable object; "
        "not released (re-export it from the PACS if it should be)"
    )


# ------------------------------------------------------------------ tables
def _cleaned_rows(outcomes: Sequence[Outcome], released: bool) -> list[dict[str, Any]]:
    """The cleaned-table rows of the released (or quarantined) images among ``outcomes``."""
    return [
        {
            "name": o.job.name,
            "entity_id": o.job.entity_id,
            "item_id": o.job.item_id,
            "path": f"{o.job.entity_id}/{o.job.name}",
            **o.cleaned,
        }
        for o in outcomes
        if not o.error and o.job.quarantined != released
    ]


def _lookup_rows(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """The lookup-table rows of ``outcomes``: one ``(file)`` row per job, then its replacements."""
    rows: list[dict[str, Any]] = []
    for o in outcomes:
        j = o.job
        common = {"entity_id": j.entity_id, "item_id": j.item_id, "jitter_days": j.jitter_days}
        rows.append(
            {"source_path": j.source_path, "field": "(file)", "original": j.source_path}
            | {"new": j.name}
            | common
        )
        rows.extend(
            {"source_path": j.source_path, "field": f, "original": old, "new": new} | common
            for f, old, new in o.lookup
        )
    return rows


def cleaned_table(outcomes: Sequence[Outcome], released: bool = True) -> pd.DataFrame:
    """One row per written image: name, entity, item, path and de-identified header fields."""
    table = pd.DataFrame(_cleaned_rows(outcomes, released))
    if table.empty:  # typed, so that Arrow reads string columns back (not null ones)
        table = pd.DataFrame(columns=["name", "entity_id", "item_id", "path"])
    return table.astype("string")


def lookup_table(outcomes: Sequence[Outcome]) -> pd.DataFrame:
    """PHI lookup: source path and original IDs/UIDs -> new names and values, date offset."""
    rows = _lookup_rows(outcomes)
    return pd.DataFrame(rows).astype({"jitter_days": "int64"}) if rows else pd.DataFrame()


def gate_values(outcomes: Sequence[Outcome], batch_name: str) -> dict[str, str]:
    """Every identifying value removed anywhere in the batch: value -> category."""
    values: dict[str, str] = {}
    for o in outcomes:
        for value, category in o.removed.items():
            values.setdefault(value, category)
    values.setdefault(batch_name, "batch folder name")
    return values


# ------------------------------------------------------------------ spooled tables
#: Spool part kinds: the released images' cleaned rows, the quarantined ones', the lookup
#: rows, the removed values (value, category; first category per value in the chunk).
SPOOL_KINDS = ("cleaned", "held", "lookup", "removed", "written")
#: Outcomes spooled at a time by :func:`finish` when they still hold their rows.
SPOOL_CHUNK = 256
_LOOKUP_COLUMNS = ("source_path", "field", "original", "new", "entity_id", "item_id")


def _string_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows as an Arrow table of string columns, columns in order of first appearance."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return pa.table({c: pa.array([row.get(c) for row in rows], pa.string()) for c in columns})


def spool_chunk(outcomes: Sequence[Outcome], spool: Path) -> list[Outcome]:
    """Write the rows and removed values of ``outcomes`` to one spool part; return them slimmed.

    Parameters
    ----------
    outcomes : sequence of Outcome
        Consecutive outcomes of a batch (one chunk); those already spooled
        (:attr:`Outcome.part` set) pass through unchanged.
    spool : Path
        The spool folder; created if missing.  Each call writes up to three
        files ``<part>.<kind>.parquet`` (:data:`SPOOL_KINDS`) under a fresh
        part name, so a chunk run twice (a retried Dask task) leaves an
        unused part rather than a mixed one.

    Returns
    -------
    list of Outcome
        The same outcomes without their cleaned and lookup rows and removed
        values, naming the part.
    """
    fresh = [o for o in outcomes if not o.part]
    if not fresh:
        return list(outcomes)
    part = uuid.uuid4().hex
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    tables = {
        "cleaned": _cleaned_rows(fresh, released=True),
        "held": _cleaned_rows(fresh, released=False),
        "lookup": _lookup_rows(fresh),
    }
    removed: dict[str, str] = {}
    for o in fresh:
        for value, category in o.removed.items():
            removed.setdefault(value, category)
    for kind, rows in tables.items():
        if not rows:
            continue
        table = _string_table(rows) if kind != "lookup" else _lookup_arrow(rows)
        tmp = spool / f".{part}.{kind}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, spool / f"{part}.{kind}.parquet")
    if removed:
        table = pa.table(
            {
                "value": pa.array(list(removed), pa.string()),
                "category": pa.array(list(removed.values()), pa.string()),
            }
        )
        pq.write_table(table, spool / f".{part}.removed.tmp")
        os.replace(spool / f".{part}.removed.tmp", spool / f"{part}.removed.parquet")
    kept = [o.written for o in fresh if o.written is not None]
    if kept:
        pq.write_table(_written_arrow(kept), spool / f".{part}.written.tmp")
        os.replace(spool / f".{part}.written.tmp", spool / f"{part}.written.parquet")
    return [
        o
        if o.part
        else Outcome(
            o.job, o.error, pixel_span=o.pixel_span, implementation=o.implementation, part=part
        )
        for o in outcomes
    ]


def _written_arrow(items: Sequence[leakgate.Written]) -> pa.Table:
    """:class:`leakgate.Written` items as an Arrow table (one row each)."""
    entries = [item.entry for item in items]
    return pa.table(
        {
            "path": pa.array([item.path for item in items], pa.string()),
            "sha256": pa.array([e[0] for e in entries], pa.string()),
            **{
                name: pa.array([e[i] for e in entries], pa.uint64())
                for i, name in enumerate(("size", "mtime_ns", "ctime_ns", "inode"), start=1)
            },
            "header": pa.array([item.header for item in items], pa.binary()),
            "tail": pa.array([item.tail for item in items], pa.binary()),
            "kind": pa.array([str(item.kind) for item in items], pa.string()),
        }
    )


def spooled_written(outcomes: Sequence[Outcome], spool: Path) -> Iterator[leakgate.Written]:
    """The :class:`leakgate.Written` of spooled outcomes, read part by part from the spool."""
    for path in _spooled(outcomes, spool, "written"):
        table = pq.read_table(path).to_pydict()
        for i, rel in enumerate(table["path"]):
            entry: leakgate.FileEntry = (
                table["sha256"][i],
                table["size"][i],
                table["mtime_ns"][i],
                table["ctime_ns"][i],
                table["inode"][i],
            )
            yield leakgate.Written(
                rel, entry, table["header"][i], table["tail"][i], leakgate.Tail(table["kind"][i])
            )
    yield from (o.written for o in outcomes if o.written is not None)


def spooled_gate_values(
    outcomes: Sequence[Outcome], spool: Path, batch_name: str
) -> dict[str, str]:
    """:func:`gate_values` of spooled outcomes, read part by part from the spool.

    Parameters
    ----------
    outcomes : sequence of Outcome
        Every outcome of the batch, spooled (:func:`spool_chunk`).
    spool : Path
        The spool folder.
    batch_name : str
        The batch folder's name, itself an identifying value.

    Returns
    -------
    dict of str to str
        Every identifying value removed anywhere in the batch -> its category
        (the first one met, in job order).
    """
    values: dict[str, str] = {}
    for path in _spooled(outcomes, spool, "removed"):
        table = pq.read_table(path)
        for value, category in zip(
            table.column("value").to_pylist(), table.column("category").to_pylist(), strict=True
        ):
            values.setdefault(value, category)
    for o in outcomes:
        for value, category in o.removed.items():
            values.setdefault(value, category)
    values.setdefault(batch_name, "batch folder name")
    return values


def _lookup_arrow(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Lookup rows as an Arrow table (string columns, ``jitter_days`` int64)."""
    arrays = {c: pa.array([row[c] for row in rows], pa.string()) for c in _LOOKUP_COLUMNS}
    arrays["jitter_days"] = pa.array([row["jitter_days"] for row in rows], pa.int64())
    return pa.table(arrays)


def _spooled(outcomes: Sequence[Outcome], spool: Path, kind: str) -> list[Path]:
    """The spool files of one kind that belong to ``outcomes``, in outcome order."""
    names = dict.fromkeys(o.part for o in outcomes if o.part)
    paths = (spool / f"{name}.{kind}.parquet" for name in names)
    return [path for path in paths if path.exists()]


def write_cleaned(outcomes: Sequence[Outcome], spool: Path, out: Path, released: bool) -> None:
    """Write the ``cleaned`` (or ``quarantined``) table of spooled outcomes, part by part.

    The file holds the same columns, values and pandas metadata as
    ``cleaned_table(outcomes, released).to_parquet(out, index=False)`` would,
    without the whole table ever being in memory.

    Parameters
    ----------
    outcomes : sequence of Outcome
        Every outcome of the batch, spooled (:func:`spool_chunk`).
    spool : Path
        The spool folder.
    out : Path
        The Parquet file to write.
    released : bool
        The released images' table, or the quarantined ones'.
    """
    release.write_cleaned(_spooled(outcomes, spool, "cleaned" if released else "held"), out)


def write_lookup(outcomes: Sequence[Outcome], spool: Path, out: Path) -> None:
    """Write the PHI lookup table of spooled outcomes, part by part (as :func:`lookup_table`).

    Parameters
    ----------
    outcomes : sequence of Outcome
        Every outcome of the batch, spooled (:func:`spool_chunk`).
    spool : Path
        The spool folder.
    out : Path
        The Parquet file to write.
    """
    parts = _spooled(outcomes, spool, "lookup")
    if not parts:
        lookup_table([]).to_parquet(out, index=False)
        return
    like = pd.DataFrame([dict.fromkeys(_LOOKUP_COLUMNS, "x") | {"jitter_days": 0}])
    like = like.astype({"jitter_days": "int64"})
    release.combine_parts(parts, out, pa.Schema.from_pandas(like, preserve_index=False))


def parquet_head(path: Path, n: int) -> pd.DataFrame:
    """``pandas.read_parquet(path).head(n)``, reading only the first ``n`` rows.

    Parameters
    ----------
    path : Path
        A Parquet file written by pandas (its index not stored).
    n : int
        How many rows.

    Returns
    -------
    pandas.DataFrame
        The first ``n`` rows, with the dtypes the pandas metadata gives.
    """
    source = pq.ParquetFile(path)
    schema = source.schema_arrow
    batches = source.iter_batches(batch_size=max(n, 1)) if n > 0 else iter(())
    first = next(batches, None)
    table = pa.Table.from_batches([] if first is None else [first], schema=schema)
    head: pd.DataFrame = table.slice(0, max(n, 0)).to_pandas()
    return head


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
        When the batch's inspect outputs are missing or older than its inputs.
    LeakError
        When the leak gate finds a value it cannot hold (in no image's file or
        row); the report (``phi/deidentify/leak_report.csv``) names file and field.
    """
    if not inspect.is_current(layout):
        raise BatchError(
            f"batch {layout.name} is not inspected (or changed since): its inspect outputs "
            f"({layout.inspect_dir}) are missing or older than its files; run `sendit inspect` "
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
    with _gc_frozen():
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


@contextmanager
def _gc_frozen() -> Iterator[None]:
    """Keep the objects that exist now out of the cyclic collector's scans for a while.

    The per-file loop allocates many short-lived objects; each collection it
    triggers also walked every object the kernel already held (its tables,
    modules): ~20% of a 1,000-file run in one worker.  ``gc.freeze`` before
    forking worker processes is also what the ``gc`` documentation advises.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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
    policy = leakgate.policy_of_tables([layout.cleaned_table, layout.held_table])
    implementations = {o.implementation for o in outcomes if o.implementation and not o.error}
    if implementations:  # one file's creator UID is another's ImplementationClassUID
        policy = leakgate.Policy.of_values(policy.technical, policy.codes | implementations)
    leakgate.save_policy(layout, policy)
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
