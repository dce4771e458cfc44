"""Search uploaded images and entities; return links to the stored objects.

With ``SEND_TO_GOOGLE`` on, queries go to Datastore (``Collection > Entity >
Image``) and links are ``gs://`` URLs; otherwise they go to the local store's
``index.sqlite`` and links are ``file://`` URLs.  Datastore is asked only what
its built-in indexes answer (ancestor + equality on ``PatientSex`` /
``Modality``); age ranges and text are filtered client-side, so no composite
index has to be deployed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pandas as pd

from .targets.base import collection_name, plain, setting
from .targets.local import INDEX_NAME, storage_dir

IMAGE_COLUMNS = [
    "entity_id", "name", "url", "PatientSex", "PatientAge", "PatientAgeYears", "Modality",
    "SeriesDescription", "StudyDescription", "md5", "size",
]  # fmt: skip
ENTITY_COLUMNS = [
    "id", "url", "PatientSex", "PatientAge", "PatientAgeYears", "IMAGE_COUNT", "UPLOAD_AGENT",
]  # fmt: skip
TEXT_COLUMNS = ("SeriesDescription", "StudyDescription")


def find_images(
    settings: Mapping[str, Any],
    work: str | Path,
    *,
    sex: str | None = None,
    age_min: int | None = None,
    age_max: int | None = None,
    modality: str | None = None,
    text: str | None = None,
) -> pd.DataFrame:
    """Find uploaded images by sex, age range (years), modality and description text.

    Parameters
    ----------
    settings : Mapping[str, Any]
        Upload settings; ``SEND_TO_GOOGLE`` picks Datastore over the local index.
    work : str or Path
        The work root (the local store defaults to ``<work>/storage``).
    sex : str, optional
        ``PatientSex`` exactly (``"F"``, ``"M"``, ``"O"``).
    age_min, age_max : int, optional
        Inclusive bounds on the age in whole years.
    modality : str, optional
        ``Modality`` exactly (``"CT"``, ``"MR"``, ...).
    text : str, optional
        Case-insensitive substring of ``SeriesDescription`` or ``StudyDescription``.

    Returns
    -------
    pandas.DataFrame
        One row per image with :data:`IMAGE_COLUMNS`; ``url`` links to the stored object.
    """
    if setting(settings, "SEND_TO_GOOGLE", False):
        equal = {"PatientSex": _code(sex), "Modality": _code(modality)}
        frame = _datastore(settings, "Image", equal, IMAGE_COLUMNS)
        if "entity_id" in frame and frame["entity_id"].isna().any():
            frame["entity_id"] = frame["entity_id"].fillna("")
    else:
        frame = _sqlite_images(settings, Path(work), sex, modality)
    frame = _age(frame, age_min, age_max)
    if text:
        hits = pd.Series(False, index=frame.index)
        for col in TEXT_COLUMNS:
            hits |= frame[col].fillna("").astype(str).str.contains(text, case=False, regex=False)
        frame = frame[hits]
    return frame.sort_values(["entity_id", "name"]).reset_index(drop=True)


def find_entities(
    settings: Mapping[str, Any],
    work: str | Path,
    *,
    sex: str | None = None,
    age_min: int | None = None,
    age_max: int | None = None,
) -> pd.DataFrame:
    """Find uploaded entities (studies) by sex and age range.

    Parameters
    ----------
    settings, work, sex, age_min, age_max
        As for :func:`find_images`.

    Returns
    -------
    pandas.DataFrame
        One row per entity with :data:`ENTITY_COLUMNS`; ``url`` is the entity's folder/prefix.
    """
    if setting(settings, "SEND_TO_GOOGLE", False):
        frame = _datastore(settings, "Entity", {"PatientSex": _code(sex)}, ENTITY_COLUMNS)
    else:
        frame = _sqlite_entities(settings, Path(work), sex)
    return _age(frame, age_min, age_max).sort_values("id").reset_index(drop=True)


def _code(value: str | None) -> str | None:
    """DICOM code strings (sex, modality) are stored upper-case; match them regardless of case."""
    return None if value is None else value.strip().upper()


def _age(frame: pd.DataFrame, age_min: int | None, age_max: int | None) -> pd.DataFrame:
    years = pd.to_numeric(frame["PatientAgeYears"], errors="coerce")
    keep = pd.Series(True, index=frame.index)
    if age_min is not None:
        keep &= years >= age_min
    if age_max is not None:
        keep &= years <= age_max
    return frame[keep]


# -- Datastore -----------------------------------------------------------------------------
def _datastore(
    settings: Mapping[str, Any], kind: str, equal: Mapping[str, str | None], columns: Sequence[str]
) -> pd.DataFrame:
    from .targets.google import GoogleTarget

    target = GoogleTarget(settings)
    client = target.datastore_client()
    ds = target._datastore_mod
    query = client.query(kind=kind, ancestor=client.key("Collection", target.collection))
    for name, value in equal.items():
        if value is not None:
            query.add_filter(filter=ds.query.PropertyFilter(name, "=", value))
    rows = []
    for entity in query.fetch():
        row = {k: plain(v) for k, v in entity.items()}
        if kind == "Entity":
            row["id"] = entity.key.name
            row["url"] = f"gs://{target.bucket_name}/{target.collection}/{entity.key.name}/"
        else:
            row["name"] = entity.key.name
            row["entity_id"] = entity.key.parent.name
        rows.append(row)
    return _frame(rows, columns)


def _frame(rows: Sequence[Mapping[Any, Any]], columns: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows))
    for col in columns:
        if col not in frame:
            frame[col] = None
    return frame[list(columns)]


# -- local index ---------------------------------------------------------------------------
def _sqlite(
    settings: Mapping[str, Any], work: Path, sql: str, params: Sequence[Any]
) -> pd.DataFrame:
    path = storage_dir(settings, work) / INDEX_NAME
    if not path.is_file():
        return pd.DataFrame()
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
        return pd.read_sql_query(sql, conn, params=list(params))


def _where(collection: str, sex: str | None, modality: str | None = None) -> tuple[str, list[Any]]:
    clauses, params = ["collection = ?"], [collection]
    for col, value in (("PatientSex", sex), ("Modality", modality)):
        if value is not None:
            clauses.append(f"UPPER({col}) = ?")
            params.append(value.strip().upper())
    return " AND ".join(clauses), params


def _sqlite_images(
    settings: Mapping[str, Any], work: Path, sex: str | None, modality: str | None
) -> pd.DataFrame:
    where, params = _where(collection_name(settings), sex, modality)
    cols = ", ".join(IMAGE_COLUMNS)
    frame = _sqlite(settings, work, f"SELECT {cols} FROM image WHERE {where}", params)  # noqa: S608
    return _frame(frame.to_dict("records"), IMAGE_COLUMNS)


def _sqlite_entities(settings: Mapping[str, Any], work: Path, sex: str | None) -> pd.DataFrame:
    collection = collection_name(settings)
    where, params = _where(collection, sex)
    cols = ", ".join(c for c in ENTITY_COLUMNS if c != "url")
    frame = _sqlite(settings, work, f"SELECT {cols} FROM entity WHERE {where}", params)  # noqa: S608
    root = storage_dir(settings, work).resolve() / collection
    rows = [{**r, "url": (root / str(r["id"])).as_uri() + "/"} for r in frame.to_dict("records")]
    return _frame(rows, ENTITY_COLUMNS)


def plot_counts(images: pd.DataFrame) -> Any:
    """Bar chart of images per modality, stacked by entity; a note when nothing matched."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    if images.empty:
        ax.text(0.5, 0.5, "no images match (run 04_upload first?)", ha="center", va="center")
        ax.axis("off")
        return fig
    counts = images.groupby(["Modality", "entity_id"]).size().unstack(fill_value=0)
    counts.plot.bar(stacked=True, ax=ax)
    ax.set_ylabel("images")
    fig.tight_layout()
    return fig


def open_link(url: str, jupyter_root: str | Path | None = None) -> str:
    """Turn a stored object's ``url`` into a link a browser (or JupyterLab) can open.

    Parameters
    ----------
    url : str
        A ``gs://BUCKET/OBJECT`` or ``file://`` URL from :func:`find_images`.
    jupyter_root : str or Path, optional
        The Jupyter server's root directory; a local file under it becomes a relative
        ``files/`` link, one outside it stays ``file://``.

    Returns
    -------
    str
        The Cloud console URL for Storage objects, a Jupyter ``files/`` link or ``file://`` URL.
    """
    if url.startswith("gs://"):
        bucket, _, obj = url[len("gs://"):].partition("/")
        return f"https://console.cloud.google.com/storage/browser/_details/{bucket}/{obj}"
    if url.startswith("file://") and jupyter_root is not None:
        from urllib.parse import unquote, urlparse

        path = Path(unquote(urlparse(url).path))
        root = Path(jupyter_root).resolve()
        if path.is_relative_to(root):
            tail = "/" if url.endswith("/") else ""
            return "files/" + path.relative_to(root).as_posix() + tail
    return url


def orthanc_link(orthanc_url: str, instance_id: str) -> str:
    """Orthanc Explorer link to one instance, with any ``user:password@`` removed from the URL.

    Parameters
    ----------
    orthanc_url : str
        ``ORTHANC_URL`` (e.g. ``http://orthanc:8042``).
    instance_id : str
        Orthanc's instance ID (the ``ID`` returned when the instance was stored).

    Returns
    -------
    str
        ``ORTHANC_URL/app/explorer.html#instance?uuid=ID`` without credentials.
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(orthanc_url)
    netloc = parts.netloc.rpartition("@")[2]
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return f"{base}/app/explorer.html#instance?uuid={instance_id}"
