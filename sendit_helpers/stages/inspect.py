"""Inspect stage: what a batch holds, what is broken, what may carry PHI in pixels.

Reads every file's header (never the pixel data), builds one table row per
DICOM file, a QA summary like the original sendit's batch QA (series, study
dates, modalities, bytes), screens each image with the deid ``%filter`` rules,
and writes ``phi/disposition.csv`` with ``error``/``non_dicom``/``pending``.

The stage streams: each chunk of files is read by a worker that writes its
rows to one Arrow part in ``phi/inspect/spool/`` (:func:`spool_chunk`), so
no process holds one Python dict per file of the batch; the parts are read
back as compact Arrow tables to make the files table and the dispositions.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sendit_helpers.core import discovery, disposition, spoolfiles
from sendit_helpers.core.disposition import Disposition, Row
from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.resources import content_digests, shipped
from sendit_helpers.core.settings import typed
from sendit_helpers.stages.inspectread import FIELDS, INT_FIELDS, map_read, read_one

if TYPE_CHECKING:
    pass

#: sendit's own %filter rules (modalities that usually carry burned-in text).
SENDIT_FILTERS = shipped("params/recipes/sendit-filters.deid")
#: The files-table columns :func:`ocr.screen_files` reads.
_OCR_COLUMNS = ("source_path", "SeriesInstanceUID", "InstanceNumber", "has_pixels")
_FINAL = {str(Disposition.RELEASED), str(Disposition.QUARANTINED), str(Disposition.SKIPPED)}


@dataclass
class InspectResult:
    """Everything the inspect stage found in one batch."""

    layout: BatchLayout
    files: pd.DataFrame
    """One row per readable DICOM file, with screening columns."""
    dispositions: pd.DataFrame
    series: pd.DataFrame
    dates: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged(self) -> pd.DataFrame:
        """Images the pixel-PHI screen flagged."""
        cols = [
            "relative_path",
            "SeriesNumber",
            "InstanceNumber",
            "Modality",
            "group",
            "label",
            "reason_screen",
        ]
        return self.files.loc[self.files["flagged"], cols]

    def summary_table(self) -> pd.DataFrame:
        """The QA summary as a two-column table for display."""
        return pd.DataFrame(
            [(k, v) for k, v in self.summary.items() if k != "warnings"], columns=["item", "value"]
        )


# ------------------------------------------------------------------ discovery
def discover(source: Path) -> list[Path]:
    """Every regular file below ``source``, recursively, in a stable order (folder links not
    followed; other entries are reported by :func:`discover_inputs`)."""
    return [Path(name) for name in discover_names(source)]


def discover_names(source: Path) -> list[str]:
    """:func:`discover` as strings (a string costs a fraction of a :class:`Path`)."""
    return discovery.scan(source).files


def discover_inputs(layout: BatchLayout) -> discovery.Found:
    """The batch's files to read, and a disposition row for every other entry.

    A loose batch (:attr:`BatchLayout.loose`) is its folder's own entries and
    the sub-folders holding no DICOM study; the work folder is always left out.
    Never raises for an entry: unreadable folders, links that lead nowhere,
    FIFOs, devices and non-UTF-8 names become rows (:func:`discovery.scan`).
    """
    include = discovery.loose_filter(layout.source) if layout.loose else None
    return discovery.scan(layout.source, include=include, exclude=layout.work)


# ------------------------------------------------------------------ spooled rows
#: Columns of the files table (:func:`files_table`, ``files.parquet``), in order.
FILES_COLUMNS: tuple[str, ...] = (
    "source_path",
    "relative_path",
    "size_bytes",
    "transfer_syntax",
    "has_pixels",
    *FIELDS,
    "flagged",
    "group",
    "label",
    "reason_screen",
    "coordinates",
    "reason",
)
#: Columns of a spool part (:func:`spool_chunk`): the files table's and
#: :func:`inspectread.read_one`'s ``kind``; ``relative_path`` is set for DICOM rows only.
SPOOL_COLUMNS: tuple[str, ...] = ("kind", *FILES_COLUMNS)
#: Arrow types of the spool columns that are not strings (``large_string``: the type
#: pandas' own string columns use, so :func:`files_frame` shares their buffers).
_SPOOL_TYPES: dict[str, pa.DataType] = {
    "size_bytes": pa.int64(),
    "has_pixels": pa.bool_(),
    "flagged": pa.bool_(),
    **{name: pa.int64() for name in INT_FIELDS},
}
#: Always in a spool part; the others only when a DICOM row of the chunk has them.
_BASE_COLUMNS = ("source_path", "relative_path", "size_bytes", "kind", "reason")
#: A non-null value of each spool type, for :func:`_frame_types`.
_SAMPLES: dict[pa.DataType, Any] = {pa.int64(): 0, pa.bool_(): True, pa.large_string(): "x"}


def _spool_type(column: str) -> pa.DataType:
    return _SPOOL_TYPES.get(column, pa.large_string())


def rows_table(rows: Sequence[Mapping[str, Any]], source: str) -> pa.Table:
    """:func:`inspectread.read_one` rows as one Arrow table of :data:`SPOOL_COLUMNS`.

    A column that no DICOM row has (the screening columns when nothing
    screens) is left out, as :func:`files_table` would find it missing.
    """
    present = {key for row in rows if row["kind"] == "dicom" for key in row}
    arrays: dict[str, pa.Array] = {}
    for column in SPOOL_COLUMNS:
        if column == "relative_path":
            values = [
                Path(row["source_path"]).relative_to(source).as_posix()
                if row["kind"] == "dicom"
                else None
                for row in rows
            ]
        elif column in _BASE_COLUMNS or column in present:
            values = [row.get(column) for row in rows]
        else:
            continue
        arrays[column] = pa.array(values, _spool_type(column))
    return pa.table(arrays)


def spool_chunk(
    paths: list[str],
    filter_recipes: tuple[str, ...],
    use_deid: bool,
    spool: str,
    source: str,
    digests: tuple[str, ...] | None = None,
) -> list[str]:
    """Read a chunk of files (:func:`inspectread.read_one`) and write their rows to one spool part.

    Parameters
    ----------
    paths : list of str
        Consecutive files of the batch.
    filter_recipes, use_deid
        As :func:`inspectread.read_one`.
    spool : str
        The spool folder (exists).  The part gets a fresh name, so a chunk run
        twice (a retried Dask task) leaves an unused part, never a mixed one.
    source : str
        The batch folder (``relative_path`` is relative to it).
    digests : tuple of str, optional
        As :func:`inspectread.read_one`.

    Returns
    -------
    list of str
        The part's file name, once per path (:func:`executors.map_chunks`
        wants one result per item).
    """
    if digests is None:
        digests = content_digests(filter_recipes)
    table = rows_table([read_one(p, filter_recipes, use_deid, digests) for p in paths], source)
    name = f"{uuid.uuid4().hex}.rows{spoolfiles.SUFFIX}"
    spoolfiles.write_part(table, Path(spool) / name)
    return [name] * len(paths)


def spool_all(
    paths: Sequence[str],
    spool: Path,
    source: Path,
    *,
    workers: int = 1,
    filter_recipes: Sequence[str] = (),
    use_deid: bool = True,
    progress: bool = True,
    executor: str = "local",
    scheduler: str = "",
) -> list[Path]:
    """:func:`inspectread.read_all`, writing rows to spool parts instead of returning them.

    Returns
    -------
    list of Path
        The parts, in file order (:func:`combine_parts` reads them).
    """
    names = map_read(
        spool_chunk,
        paths,
        workers=workers,
        filter_recipes=filter_recipes,
        use_deid=use_deid,
        progress=progress,
        executor=executor,
        scheduler=scheduler,
        spool=os.fspath(spool),
        source=os.fspath(source),
    )
    return [spool / name for name in dict.fromkeys(names)]


def combine_parts(parts: Sequence[Path]) -> pa.Table:
    """The spool parts as one Arrow table (columns missing from a part are null there)."""
    tables = [spoolfiles.read_part(path) for path in parts]
    present = {name for table in tables for name in table.column_names}
    # no parts (a batch holding only links, FIFOs or nothing to read): the base columns
    columns = [c for c in SPOOL_COLUMNS if c in present or c in _BASE_COLUMNS]
    schema = pa.schema([(c, _spool_type(c)) for c in columns])
    if not tables:
        return schema.empty_table()
    return pa.concat_tables([_conformed(table, schema) for table in tables])


def _conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns, in order; those it lacks are null."""
    at = {name: i for i, name in enumerate(table.column_names)}  # one lookup per column
    return pa.Table.from_arrays(
        [
            table.column(at[c]) if c in at else pa.nulls(len(table), t)
            for c, t in zip(schema.names, schema.types, strict=True)
        ],
        schema=schema,
    )


def _samples(dicom: pa.Table) -> tuple[tuple[str, Any], ...]:
    """Each read column of ``dicom`` with a value of its type, or None where it is all null."""
    n = dicom.num_rows
    return tuple(
        (column, _SAMPLES[data.type] if data.null_count < n else None)
        for column, data in zip(dicom.column_names, dicom.columns, strict=True)
        if column not in ("kind", "source_path", "relative_path")
    )


@functools.lru_cache(maxsize=32)
def _frame_types(samples: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    """The columns and dtypes of :func:`files_table` of one row holding ``samples``.

    :func:`files_table` of that row has the column types that :func:`files_table`
    of every row would have (pandas infers them from which values are there).
    They depend on which columns hold values only, so they are worked out
    once per process for each such set (most batches share one), not per batch.
    """
    row: dict[str, Any] = {"kind": "dicom", "source_path": os.fspath(Path("/like") / "x")}
    row.update(samples)
    like = files_table([row], Path("/like"))
    return tuple((str(column), dtype) for column, dtype in like.dtypes.items())


def files_frame(rows: pa.Table, source: Path) -> pd.DataFrame:
    """:func:`files_table` of spooled rows (:func:`combine_parts`), the same frame.

    Built column by column from Arrow, never through one dict per file.
    """
    is_dicom = pc.equal(rows.column("kind"), "dicom")
    dicom = rows if pc.all(is_dicom).as_py() else rows.filter(is_dicom)
    if dicom.num_rows == 0:
        return files_table([], source)
    n = dicom.num_rows
    columns: dict[str, pd.Series] = {}
    for column, dtype in _frame_types(_samples(dicom)):
        name = "reason" if column == "note" else column
        data = dicom.column(name) if name in dicom.column_names else pa.chunked_array([pa.nulls(n)])
        if pa.types.is_boolean(data.type):
            data = pc.fill_null(data, False)  # files_table: .eq(True)
        mapper = {pa.int64(): pd.Int64Dtype()}.get if isinstance(dtype, pd.Int64Dtype) else None
        columns[column] = data.to_pandas(types_mapper=mapper).astype(dtype)
    return pd.DataFrame(columns)


# ------------------------------------------------------------------ tables
def files_table(rows: Iterable[Mapping[str, Any]], source: Path) -> pd.DataFrame:
    """The per-DICOM-file table from :func:`inspectread.read_all` rows."""
    dicom = [dict(r) for r in rows if r["kind"] == "dicom"]
    table = pd.DataFrame(dicom).reindex(columns=list(FILES_COLUMNS))
    table["relative_path"] = [Path(p).relative_to(source).as_posix() for p in table["source_path"]]
    for col in INT_FIELDS:
        table[col] = table[col].astype("Int64")
    table["flagged"] = table["flagged"].eq(True)
    table["has_pixels"] = table["has_pixels"].eq(True)
    table["size_bytes"] = table["size_bytes"].astype("int64")
    for col in FILES_COLUMNS:
        if table[col].dtype == object:
            table[col] = table[col].astype("string")
    return table.rename(columns={"reason": "note"})


def disposition_rows(rows: Iterable[Mapping[str, Any]]) -> list[Row]:
    """Inspect's disposition: error / non_dicom with the reason, pending for DICOM."""
    out = []
    for r in rows:
        kind = r["kind"]
        state = Disposition.PENDING if kind == "dicom" else Disposition(kind)
        out.append(Row(r["source_path"], state, r["reason"] if kind != "dicom" else ""))
    return out


def series_table(files: pd.DataFrame) -> pd.DataFrame:
    """Series like the original sendit QA: SeriesNumber, SeriesDescription, image count."""
    if files.empty:
        return pd.DataFrame(
            columns=["SeriesNumber", "SeriesDescription", "Modality", "images", "flagged", "bytes"]
        )
    # One first() and one sum() over several columns: named aggregations cost a pass each.
    grouped = files.groupby("SeriesInstanceUID", dropna=False)
    first = grouped[["SeriesNumber", "SeriesDescription", "Modality"]].first()
    sums = grouped[["flagged", "size_bytes"]].sum()
    table = pd.DataFrame(
        {
            "SeriesNumber": first["SeriesNumber"],
            "SeriesDescription": first["SeriesDescription"],
            "Modality": first["Modality"],
            "images": grouped.size(),
            "flagged": sums["flagged"],
            "bytes": sums["size_bytes"],
        }
    )
    return table.sort_values(["SeriesNumber"], na_position="last").reset_index(drop=True)


def dates_table(files: pd.DataFrame) -> pd.DataFrame:
    """Study dates with image counts (more than one date is a warning)."""
    counts = files["StudyDate"].fillna("(none)").value_counts().sort_index()
    return counts.rename_axis("StudyDate").reset_index(name="images")


def qa_summary(
    files: pd.DataFrame, dispositions: pd.DataFrame, dates: pd.DataFrame
) -> dict[str, Any]:
    """Counts, modalities, bytes and warnings for a batch."""
    counts = disposition.counts(dispositions)
    warnings = []
    if len(dates) > 1:
        warnings.append(f"{len(dates)} different study dates in one batch; check it is one study")
    if files["StudyInstanceUID"].nunique() > 1:
        warnings.append(f"{files['StudyInstanceUID'].nunique()} studies in one batch")
    if counts["error"]:
        warnings.append(f"{counts['error']} unreadable or truncated files (see disposition.csv)")
    if files["flagged"].any():
        warnings.append(f"{int(files['flagged'].sum())} images may carry PHI in their pixels")
    return {
        "files": int(len(dispositions)),
        "dicom": int(len(files)),
        "non_dicom": int(counts["non_dicom"]),
        "errors": int(counts["error"]),
        "series": int(files["SeriesInstanceUID"].nunique()),
        "studies": int(files["StudyInstanceUID"].nunique()),
        "modalities": ", ".join(sorted(str(m) for m in files["Modality"].dropna().unique())),
        "study_dates": int(len(dates)),
        "flagged_images": int(files["flagged"].sum()),
        "total_bytes": int(files["size_bytes"].sum()),
        "warnings": warnings,
    }


# ------------------------------------------------------------------ the stage
def inspect_batch(layout: BatchLayout, settings: Mapping[str, Any]) -> InspectResult:
    """Run the inspect stage on one batch and save its tables under ``phi/inspect/``.

    Parameters
    ----------
    layout : BatchLayout
        The batch (input folder and work folder).
    settings : mapping
        Resolved settings (``WORKERS``, ``USE_DEID_FILTERS``, ``PIXEL_FILTER_RECIPES``,
        ``PROGRESS``).

    Returns
    -------
    InspectResult
    """
    layout.check_source()
    layout.ensure()
    found = discover_inputs(layout)
    rows = _read_spooled(layout, settings, found.files)
    files = files_frame(rows, layout.source)
    kinds = rows.select(["source_path", "kind", "reason"])
    del rows
    _release_arrow()
    ocr_note = ocr_screen(layout, files, settings)
    _release_arrow()
    odd = disposition.to_frame(found.rows)
    table = _merge_dispositions(
        layout,
        pd.concat([disposition_frame(kinds), odd], ignore_index=True)
        if len(odd)
        else disposition_frame(kinds),
    )
    del kinds
    dates = dates_table(files)
    result = InspectResult(layout, files, table, series_table(files), dates)
    result.summary = qa_summary(files, table, dates)
    if ocr_note:
        result.summary["warnings"].append(ocr_note)
    save(result)
    _release_arrow()
    return result


def _release_arrow() -> None:
    """Give the memory Arrow freed back to the system (``malloc_trim`` for the system pool).

    Writing and reading the spool parts frees buffers that the allocator would
    otherwise keep (with Arrow's mimalloc pool, about 5 MB per 1000 files by the
    end of the stage), so the kernel's peak would grow with the batch.
    """
    pa.default_memory_pool().release_unused()


def ocr_screen(layout: BatchLayout, files: pd.DataFrame, settings: Mapping[str, Any]) -> str:
    """OCR the images (``OCR_SCREEN``); flag those with text, in place. Returns a warning or "".

    Found text is PHI: it is saved in ``phi/inspect/ocr.parquet`` and never
    printed.  With ``OCR_SCREEN: auto`` a missing tesseract gives a warning for
    the QA summary instead of an error; with ``on`` it is an error.
    """
    from sendit_helpers.deid import ocr

    cfg = typed(settings)
    mode = cfg.review.ocr_screen
    if mode == "off" or files.empty:
        return ""
    if mode == "auto":
        try:
            ocr.require_tesseract()
        except ocr.OcrUnavailableError as exc:
            return f"OCR screen skipped: {exc}"
    found = ocr.screen_files(
        files.loc[files["has_pixels"], list(_OCR_COLUMNS)],
        sample_per_series=cfg.review.ocr_sample_per_series,
        workers=cfg.run.workers,
        progress=cfg.run.progress,
        prescreen=cfg.review.ocr_prescreen,
    )
    ocr.save(layout, found)
    hit = files["source_path"].isin(found.loc[found["ocr_flagged"], "source_path"])
    new = hit & ~files["flagged"]
    for column in ("group", "label", "reason_screen"):
        files[column] = files[column].astype("string")
    if hit.any():  # setting through an all-False mask costs as much as a real one
        files.loc[new, ["group", "label", "reason_screen"]] = ["graylist", ocr.LABEL, ocr.LABEL]
        files.loc[hit, "flagged"] = True
    return ""


def _read_spooled(
    layout: BatchLayout, settings: Mapping[str, Any], names: Sequence[str]
) -> pa.Table:
    """Every file's row, read chunk by chunk through the spool ``phi/inspect/spool/``."""
    spool = layout.inspect_dir / "spool"
    shutil.rmtree(spool, ignore_errors=True)
    spool.mkdir(mode=0o700, parents=True)
    cfg = typed(settings)
    filters = [str(SENDIT_FILTERS)] if cfg.inspect.use_sendit_filters else []
    try:
        parts = spool_all(
            names,
            spool,
            layout.source,
            workers=cfg.run.workers,
            filter_recipes=[*filters, *cfg.inspect.pixel_filter_recipes, *_site(cfg)],
            use_deid=cfg.inspect.use_deid_filters,
            progress=cfg.run.progress,
            executor=cfg.run.executor,
            scheduler=cfg.run.dask_scheduler,
        )
        return combine_parts(parts)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
        _release_arrow()


def _site(settings: Mapping[str, Any]) -> list[str]:
    """The site's filter file (review's rules), when it exists: screened first of all."""
    from sendit_helpers.deid.siterules import site_filters_path

    path = site_filters_path(settings)
    return [str(path)] if path.is_file() else []


def disposition_frame(rows: pa.Table) -> pd.DataFrame:
    """:func:`disposition.to_frame` of :func:`disposition_rows`, from spooled rows.

    Parameters
    ----------
    rows : pyarrow.Table
        ``source_path``, ``kind`` and ``reason`` of every file (:func:`combine_parts`).

    Returns
    -------
    pandas.DataFrame
        error / non_dicom with the reason, pending (no reason) for DICOM.
    """
    kind = rows.column("kind")
    unknown = set(pc.unique(kind).to_pylist()) - {"dicom", *(str(d) for d in Disposition)}
    if unknown:
        raise ValueError(f"unknown file kinds {sorted(unknown)}")
    is_dicom = pc.equal(kind, "dicom")
    state = pc.if_else(is_dicom, str(Disposition.PENDING), kind)
    reason = pc.if_else(is_dicom, "", rows.column("reason"))
    n = rows.num_rows
    return pd.DataFrame(
        {
            "source_path": rows.column("source_path").to_pylist(),
            "disposition": state.to_pylist(),
            "reason": reason.to_pylist(),
            "output_name": [""] * n,
        },
        columns=disposition.COLUMNS,
    )


def _merge_dispositions(layout: BatchLayout, new: pd.DataFrame) -> pd.DataFrame:
    """Write inspect's rows, keeping later stages' outcomes for files still pending here."""
    old = disposition.read(layout).drop_duplicates("source_path", keep="last")
    final = old[old["disposition"].isin(_FINAL)].set_index("source_path")
    keep = new["disposition"].eq(str(Disposition.PENDING)) & new["source_path"].isin(final.index)
    if keep.any():
        columns = ["disposition", "reason", "output_name"]
        earlier = final.loc[new.loc[keep, "source_path"], columns].astype(str)
        new.loc[keep, columns] = earlier.to_numpy()
    disposition.write(layout, new)
    return disposition.read(layout)


def save(result: InspectResult) -> Path:
    """Write the inspect tables to ``phi/inspect/``; return that folder."""
    out = result.layout.inspect_dir
    out.mkdir(parents=True, exist_ok=True)
    result.files.to_parquet(out / "files.parquet", index=False)
    result.series.to_parquet(out / "series.parquet", index=False)
    result.dates.to_parquet(out / "dates.parquet", index=False)
    (out / "summary.json").write_text(json.dumps(result.summary, indent=2))
    return out


def load(layout: BatchLayout, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a batch's ``files.parquet`` written by an earlier inspect.

    Parameters
    ----------
    layout : BatchLayout
        The batch.
    columns : sequence of str, optional
        Read only these columns (those the table has, in this order), so a
        caller that needs a few does not hold every header column of every
        file.  None reads them all.

    Returns
    -------
    pandas.DataFrame
        The table, or the wanted columns of it.
    """
    path = layout.inspect_dir / "files.parquet"
    if columns is None:
        return pd.read_parquet(path)
    present = set(pq.read_schema(path).names)
    return pd.read_parquet(path, columns=[c for c in dict.fromkeys(columns) if c in present])


def has_outputs(layout: BatchLayout) -> bool:
    """True when the batch's inspect outputs exist.

    Whether they are current (same inputs and settings) is the run layer's question,
    answered by the stage's stamp (:func:`sendit_helpers.run.pipeline.is_current`).
    """
    return (layout.inspect_dir / "summary.json").exists() and layout.disposition_csv.exists()


def montages(result: InspectResult, settings: Mapping[str, Any]) -> list[Path]:
    """Save a thumbnail montage per series under ``phi/inspect/`` (when ``THUMBNAILS`` is on)."""
    cfg = typed(settings)
    if not cfg.inspect.thumbnails or result.files.empty:
        return []
    from sendit_helpers.deid.plots import series_montages

    return series_montages(
        result.files,
        result.layout.inspect_dir,
        max_images=cfg.inspect.montage_max_images,
        size=cfg.inspect.thumbnail_size,
    )
