"""Search uploaded images and entities; return links to the stored objects.

The backend follows the upload settings (:func:`backend_for`): with
``SEND_TO_GOOGLE`` on, queries go to Datastore (``Collection > Entity > Image``)
and links are ``gs://`` URLs; with ``SEND_TO_ORTHANC`` on (and ``ORTHANC_URL``
set), to Orthanc's ``/tools/find`` and links are Orthanc instance URLs (without
credentials); otherwise to the local store's ``index.sqlite`` and links are
``file://`` URLs.  Datastore is asked only what its built-in indexes answer
(ancestor + equality on ``PatientSex`` / ``Modality``); age ranges, body part
and text are filtered client-side, so no composite index has to be deployed.
Code filters (sex, modality, body part) ignore case on every backend.

:func:`links_table` renders a result as an HTML table whose links open: Jupyter's
file route for a local store under the Jupyter root, the Cloud console for
Storage objects, Orthanc Explorer for Orthanc instances.
"""

from __future__ import annotations

import html
import json
import os
import re
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import closing
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

import pandas as pd

from sendit_helpers.core.errors import SettingsError
from sendit_helpers.core.settings import typed
from sendit_helpers.targets.base import age_years, collection_name, plain, public_url
from sendit_helpers.targets.local import INDEX_NAME, storage_dir

IMAGE_COLUMNS = [
    "entity_id", "name", "url", "PatientSex", "PatientAge", "PatientAgeYears", "Modality",
    "BodyPartExamined", "SeriesDescription", "StudyDescription", "md5", "size",
]  # fmt: skip
ENTITY_COLUMNS = [
    "id", "url", "PatientSex", "PatientAge", "PatientAgeYears", "IMAGE_COUNT", "UPLOAD_AGENT",
]  # fmt: skip
TEXT_COLUMNS = ("SeriesDescription", "StudyDescription")


class Backend(StrEnum):
    """Where :func:`find_images` and :func:`find_entities` search."""

    LOCAL = "local"
    """The local store's ``index.sqlite``."""
    GOOGLE = "google"
    """Datastore (the Google target's metadata)."""
    ORTHANC = "orthanc"
    """Orthanc's REST API (``/tools/find``)."""


def backend_for(settings: Mapping[str, Any]) -> Backend:
    """The backend the upload settings point at: Google, else Orthanc, else the local store.

    Raises
    ------
    SettingsError
        ``SEND_TO_ORTHANC`` is on (without Google) but ``ORTHANC_URL`` is empty.
    """
    chosen = typed(settings).targets
    if chosen.google.send:
        return Backend.GOOGLE
    if chosen.orthanc.send:
        if not chosen.orthanc.url:
            raise SettingsError(
                "query: SEND_TO_ORTHANC is on but ORTHANC_URL is empty; set ORTHANC_URL to "
                "Orthanc's REST root (e.g. http://127.0.0.1:8042) to search what was uploaded"
            )
        return Backend.ORTHANC
    return Backend.LOCAL


def find_images(
    settings: Mapping[str, Any],
    work: str | Path,
    *,
    sex: str | None = None,
    age_min: int | None = None,
    age_max: int | None = None,
    modality: str | None = None,
    body_part: str | None = None,
    text: str | None = None,
) -> pd.DataFrame:
    """Find uploaded images by sex, age range (years), modality, body part and text.

    Parameters
    ----------
    settings : Mapping[str, Any]
        Upload settings; they pick the backend (:func:`backend_for`).
    work : str or Path
        The work root (the local store defaults to ``<work>/storage``).
    sex : str, optional
        ``PatientSex`` (``"F"``, ``"M"``, ``"O"``), any case.
    age_min, age_max : int, optional
        Inclusive bounds on the age in whole years.
    modality : str, optional
        ``Modality`` (``"CT"``, ``"MR"``, ...), any case.
    body_part : str, optional
        ``BodyPartExamined`` (``"CHEST"``, ``"KNEE"``, ...), any case.
    text : str, optional
        Case-insensitive substring of ``SeriesDescription`` or ``StudyDescription``.

    Returns
    -------
    pandas.DataFrame
        One row per image with :data:`IMAGE_COLUMNS`; ``url`` links to the stored object
        (:func:`links_table` shows it as a link that opens).

    Raises
    ------
    SettingsError
        Orthanc is the backend but ``ORTHANC_URL`` is empty.
    UploadError
        Orthanc cannot be reached or refuses the credentials.
    """
    backend = backend_for(settings)
    if backend is Backend.GOOGLE:
        equal = {"PatientSex": _code(sex), "Modality": _code(modality)}
        frame = _datastore(settings, "Image", equal, IMAGE_COLUMNS)
        if "entity_id" in frame and frame["entity_id"].isna().any():
            frame["entity_id"] = frame["entity_id"].fillna("")
        frame = _same_code(frame, "BodyPartExamined", body_part)
    elif backend is Backend.ORTHANC:
        frame = _orthanc_images(settings, Path(work), sex, modality, body_part)
    else:
        frame = _sqlite_images(settings, Path(work), sex, modality, body_part)
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
    backend = backend_for(settings)
    if backend is Backend.GOOGLE:
        frame = _datastore(settings, "Entity", {"PatientSex": _code(sex)}, ENTITY_COLUMNS)
    elif backend is Backend.ORTHANC:
        frame = _orthanc_entities(settings, sex)
    else:
        frame = _sqlite_entities(settings, Path(work), sex)
    return _age(frame, age_min, age_max).sort_values("id").reset_index(drop=True)


def _code(value: str | None) -> str | None:
    """DICOM code strings (sex, modality) are stored upper-case; match them regardless of case."""
    return None if value is None else value.strip().upper()


def _same_code(frame: pd.DataFrame, column: str, value: str | None) -> pd.DataFrame:
    """Rows whose ``column`` equals the code ``value`` ignoring case and padding."""
    if value is None:
        return frame
    codes = frame[column].fillna("").astype(str).str.strip().str.upper()
    return frame[codes == _code(value)]


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
    from sendit_helpers.targets.google import GoogleTarget

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


#: SQL for a searchable column: a column of the index, or a field of the image's metadata.
_SQL_COLUMNS = {"BodyPartExamined": "json_extract(metadata, '$.BodyPartExamined')"}


def _where(
    collection: str, sex: str | None, modality: str | None = None, body_part: str | None = None
) -> tuple[str, list[Any]]:
    clauses, params = ["collection = ?"], [collection]
    for col, value in (
        ("PatientSex", sex),
        ("Modality", modality),
        ("BodyPartExamined", body_part),
    ):
        if value is not None:
            clauses.append(f"UPPER(TRIM({_SQL_COLUMNS.get(col, col)})) = ?")
            params.append(value.strip().upper())
    return " AND ".join(clauses), params


def _sqlite_images(
    settings: Mapping[str, Any],
    work: Path,
    sex: str | None,
    modality: str | None,
    body_part: str | None,
) -> pd.DataFrame:
    where, params = _where(collection_name(settings), sex, modality, body_part)
    cols = ", ".join(f"{_SQL_COLUMNS[c]} AS {c}" if c in _SQL_COLUMNS else c for c in IMAGE_COLUMNS)
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


# -- Orthanc -------------------------------------------------------------------------------
def _orthanc_client(settings: Mapping[str, Any]) -> Any:
    from sendit_helpers.targets.orthanc import OrthancRest

    orthanc = typed(settings).targets.orthanc
    return OrthancRest(orthanc.url, 4, orthanc.username, orthanc.password)


def _orthanc_get(rest: Any, method: str, path: str, body: Any = None) -> Any:
    """One Orthanc REST call answered with JSON; any other answer is an :class:`UploadError`."""
    from sendit_helpers.core.errors import UploadError
    from sendit_helpers.targets.base import TransientError

    what = f"{method} {path.split('/')[1] if path.count('/') > 1 else path}"
    try:
        answer = rest.request(
            method, path, what=what, body=None if body is None else json.dumps(body)
        )
    except TransientError as exc:
        raise UploadError(f"query: {exc}") from exc
    if answer.status_code != 200:
        raise UploadError(
            f"query: {public_url(rest.url)} answered HTTP {answer.status_code} to {what}; "
            "check ORTHANC_URL points at Orthanc's REST port"
        )
    return answer.json()


def _find(rest: Any, level: str, query: Mapping[str, str | None]) -> list[Any]:
    """``POST /tools/find`` (expanded), code filters matched regardless of case."""
    wanted = {k: v.strip() for k, v in query.items() if v is not None}
    body = {"Level": level, "Query": wanted, "Expand": True, "CaseSensitive": False}
    return list(_orthanc_get(rest, "POST", "/tools/find", body))


def _orthanc_age(rest: Any, instance_id: str) -> str | None:
    """``PatientAge`` of one instance (not one of Orthanc's main tags), ``None`` if absent."""
    from sendit_helpers.core.errors import UploadError
    from sendit_helpers.targets.base import TransientError

    try:
        answer = rest.request("GET", f"/instances/{instance_id}/content/0010-1010", what="age")
    except TransientError as exc:
        raise UploadError(f"query: {exc}") from exc
    if answer.status_code != 200:
        return None
    value: str = answer.text.strip().strip("\x00").strip()
    return value or None


def _uploaded_names(work: Path) -> dict[str, str]:
    """Orthanc instance ID or SOPInstanceUID -> the released file's name, from the batches'
    upload manifests (``<work>/<batch>/phi/upload/manifest.csv``)."""
    names: dict[str, str] = {}
    for path in sorted(work.glob("*/phi/upload/manifest.csv")):
        table = pd.read_csv(path, dtype=str, keep_default_na=False, on_bad_lines="skip")
        if not {"item", "target", "remote_id"} <= set(table.columns):
            continue
        rows = table[table["target"].str.startswith("orthanc") & (table["remote_id"] != "")]
        for item, remote in zip(rows["item"], rows["remote_id"], strict=True):
            names[remote] = item.rpartition("/")[2]
    return names


def _orthanc_images(
    settings: Mapping[str, Any],
    work: Path,
    sex: str | None,
    modality: str | None,
    body_part: str | None,
) -> pd.DataFrame:
    from sendit_helpers.targets.orthanc import orthanc_id

    rest = _orthanc_client(settings)
    base = public_url(rest.url)
    names = _uploaded_names(work)
    rows: list[dict[str, Any]] = []
    studies: dict[str, Any] = {}
    try:
        query = {"PatientSex": _code(sex), "Modality": _code(modality),
                 "BodyPartExamined": _code(body_part)}  # fmt: skip
        for series in _find(rest, "Series", query):
            study_id = series["ParentStudy"]
            if study_id not in studies:
                studies[study_id] = _orthanc_get(rest, "GET", f"/studies/{study_id}")
            study = studies[study_id]
            patient = study.get("PatientMainDicomTags", {})
            tags = series.get("MainDicomTags", {})
            instances = _orthanc_get(rest, "GET", f"/series/{series['ID']}/instances")
            age = _orthanc_age(rest, instances[0]["ID"]) if instances else None
            for inst in instances:
                sop = inst.get("MainDicomTags", {}).get("SOPInstanceUID", "")
                ids = (
                    patient.get("PatientID", ""),
                    study.get("MainDicomTags", {}).get("StudyInstanceUID", ""),
                    tags.get("SeriesInstanceUID", ""),
                    sop,
                )
                name = names.get(inst["ID"]) or names.get(sop) or names.get(orthanc_id(*ids))
                rows.append({
                    "entity_id": patient.get("PatientID", ""),
                    "name": name or sop,
                    "url": f"{base}/instances/{inst['ID']}",
                    "PatientSex": patient.get("PatientSex"),
                    "PatientAge": age,
                    "PatientAgeYears": age_years(age),
                    "Modality": tags.get("Modality"),
                    "BodyPartExamined": tags.get("BodyPartExamined"),
                    "SeriesDescription": tags.get("SeriesDescription"),
                    "StudyDescription": study.get("MainDicomTags", {}).get("StudyDescription"),
                    "md5": None,
                    "size": inst.get("FileSize"),
                })  # fmt: skip
    finally:
        rest.close()
    return _frame(rows, IMAGE_COLUMNS)


def _orthanc_entities(settings: Mapping[str, Any], sex: str | None) -> pd.DataFrame:
    rest = _orthanc_client(settings)
    base = public_url(rest.url)
    rows: list[dict[str, Any]] = []
    try:
        for patient in _find(rest, "Patient", {"PatientSex": _code(sex)}):
            stats = _orthanc_get(rest, "GET", f"/patients/{patient['ID']}/statistics")
            first = _orthanc_get(rest, "GET", f"/patients/{patient['ID']}/instances")
            age = _orthanc_age(rest, first[0]["ID"]) if first else None
            tags = patient.get("MainDicomTags", {})
            rows.append({
                "id": tags.get("PatientID", ""),
                "url": f"{base}/patients/{patient['ID']}",
                "PatientSex": tags.get("PatientSex"),
                "PatientAge": age,
                "PatientAgeYears": age_years(age),
                "IMAGE_COUNT": int(stats.get("CountInstances", 0)),
                "UPLOAD_AGENT": None,
            })  # fmt: skip
    finally:
        rest.close()
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


def open_link(
    url: str, jupyter_root: str | Path | None = None, *, cwd: str | Path | None = None
) -> str:
    """Turn a stored object's ``url`` into a link a browser (or JupyterLab) can open.

    Parameters
    ----------
    url : str
        A ``gs://BUCKET/OBJECT``, ``file://`` or Orthanc ``.../instances/ID`` URL from
        :func:`find_images` (or ``.../patients/ID`` from :func:`find_entities`).
    jupyter_root : str or Path, optional
        The Jupyter server's root directory; a local file under it becomes a path relative
        to the notebook's folder (``../storage/a.dcm``), which JupyterLab resolves against
        the notebook and serves through its file route (``<base_url>files/storage/a.dcm``);
        one outside it stays ``file://``.
    cwd : str or Path, optional
        The notebook's folder (default: the current folder, which JupyterLab's kernels
        start in).

    Returns
    -------
    str
        The Cloud console URL for Storage objects, Orthanc Explorer's page for Orthanc
        resources (never with credentials), a relative path or a ``file://`` URL.
    """
    if url.startswith("gs://"):
        bucket, _, obj = url[len("gs://") :].partition("/")
        if not obj or obj.endswith("/"):
            return f"https://console.cloud.google.com/storage/browser/{bucket}/{obj}"
        return f"https://console.cloud.google.com/storage/browser/_details/{bucket}/{obj}"
    orthanc = _ORTHANC_RESOURCE.match(url)
    if orthanc:
        base, level, rid = orthanc.groups()
        return orthanc_link(base, rid, level.removesuffix("s"))
    if url.startswith("file://") and jupyter_root is not None:
        path = Path(unquote(urlparse(url).path))
        root = Path(jupyter_root).resolve()
        here = Path(cwd or os.getcwd()).resolve()
        if path.is_relative_to(root) and here.is_relative_to(root):
            tail = "/" if url.endswith("/") else ""
            return Path(os.path.relpath(path, here)).as_posix() + tail
    return url


_ORTHANC_RESOURCE = re.compile(r"^(https?://.+)/(instances|series|studies|patients)/([0-9a-f-]+)$")


def orthanc_link(orthanc_url: str, resource_id: str, level: str = "instance") -> str:
    """Orthanc Explorer link to one resource, with any ``user:password@`` removed from the URL.

    Parameters
    ----------
    orthanc_url : str
        ``ORTHANC_URL`` (e.g. ``http://orthanc:8042``).
    resource_id : str
        Orthanc's ID of the resource (the ``ID`` returned when the instance was stored).
    level : str
        ``"instance"`` (default), ``"series"``, ``"study"`` (``"studie"``) or ``"patient"``.

    Returns
    -------
    str
        ``ORTHANC_URL/app/explorer.html#LEVEL?uuid=ID`` without credentials.
    """
    parts = urlsplit(orthanc_url)
    netloc = parts.netloc.rpartition("@")[2]
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    page = {"studie": "study"}.get(level, level)
    return f"{base}/app/explorer.html#{page}?uuid={resource_id}"


def jupyter_root(cwd: str | Path | None = None) -> Path | None:
    """Root directory of the running Jupyter server this kernel's folder lies under, if any.

    Parameters
    ----------
    cwd : str or Path, optional
        The folder to place (default: the current one, the notebook's folder in JupyterLab).

    Returns
    -------
    Path or None
        The innermost running server's ``root_dir`` containing ``cwd``; ``None`` when no
        Jupyter server runs on this machine for this user (papermill, the CLI).
    """
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:
        return None
    here = Path(cwd or os.getcwd()).resolve()
    roots = [
        Path(str(info.get("root_dir") or info.get("notebook_dir") or "")).resolve()
        for info in list_running_servers()
    ]
    inside = [r for r in roots if str(r) != "." and here.is_relative_to(r)]
    return max(inside, key=lambda r: len(r.parts)) if inside else None


class LinksTable:
    """A query result shown as an HTML table whose links open (see :func:`links_table`).

    Attributes
    ----------
    frame : pandas.DataFrame
        The result, with a ``link`` column (the href) beside ``url``.
    """

    def __init__(self, frame: pd.DataFrame, html_text: str) -> None:
        self.frame = frame
        self._html = html_text

    def __len__(self) -> int:
        return len(self.frame)

    def _repr_html_(self) -> str:
        return self._html

    def __repr__(self) -> str:
        return self.frame.to_string(index=False) if len(self.frame) else "no rows match"


def _shown(url: str) -> str:
    """What a link's text says: the ``gs://`` URI, the local path, the public Orthanc URL."""
    if url.startswith("file://"):
        return unquote(urlparse(url).path)
    if url.startswith(("http://", "https://")):
        return public_url(url)
    return url


def links_table(
    frame: pd.DataFrame, jupyter_root_dir: str | Path | None = None, *, rows: int | None = None
) -> LinksTable:
    """Render a :func:`find_images` / :func:`find_entities` result with links that open.

    Every cell is HTML-escaped; the ``url`` cell becomes an anchor whose text is the
    full location (``gs://`` URI, local path or Orthanc URL, never truncated) and
    whose target is :func:`open_link`'s: the Cloud console, Orthanc Explorer, or the
    local file through Jupyter's file route when the store lies under the Jupyter root
    (a path relative to the notebook, which JupyterLab resolves and downloads from
    ``<base_url>files/...``; else ``file://``, which browsers open only from local pages).

    Parameters
    ----------
    frame : pandas.DataFrame
        A query result with a ``url`` column.
    jupyter_root_dir : str or Path, optional
        The Jupyter server's root; default :func:`jupyter_root` (the running server's).
    rows : int, optional
        Show only the first ``rows`` rows (the note under the table says how many there are).

    Returns
    -------
    LinksTable
        Renders as HTML in Jupyter (``_repr_html_``); ``.frame`` holds the rows and links.
    """
    root = jupyter_root() if jupyter_root_dir is None else Path(jupyter_root_dir)
    links = frame.copy()
    links["link"] = [open_link(str(u), root) if isinstance(u, str) else "" for u in links["url"]]
    shown = links.head(rows) if rows is not None else links
    cells = shown.drop(columns=["link"]).astype(object).where(shown.notna(), "")
    cells = cells.map(lambda v: html.escape(str(v)))
    anchors = []
    for url, href in zip(shown["url"], shown["link"], strict=True):
        if not isinstance(url, str) or not url:
            anchors.append("")
            continue
        if "://" not in href:  # JupyterLab: a folder opens in its file browser, a file downloads
            extra = "" if href.endswith("/") else " download"
        else:
            extra = ' target="_blank" rel="noopener"'
        anchors.append(f'<a href="{html.escape(href)}"{extra}>{html.escape(_shown(url))}</a>')
    cells["url"] = anchors

    def count(n: int, what: str) -> str:
        return f"{n} {what}" if n == 1 else f"{n} {what.replace('ty', 'tie')}s"

    caption = count(len(links), "entity")
    if "entity_id" in links:
        caption = (
            f"{count(len(links), 'image')} from {count(links['entity_id'].nunique(), 'entity')}"
        )
    note = f"<p>{len(shown)} of {len(links)} rows</p>" if len(shown) < len(links) else ""
    body = cells.to_html(index=False, escape=False, border=0, classes="sendit-links")
    return LinksTable(links, f"<p>{caption}</p>" + body + note)
