"""Settings: declared once here, documented and defaulted in ``params/default.yml``.

Code reads typed attributes (``settings.targets.orthanc.url``), grouped per concern in
frozen dataclasses whose fields name the declared setting they hold; a test keeps the
groups and :data:`SETTINGS` in step (every setting one field, same type).  Secret fields
are left out of ``repr``.

Precedence, lowest to highest: ``params/default.yml`` < params files (in the
order given) < environment variables of the same name < CLI overrides.
Values are validated at start; an error names the setting, where the value
came from, what was found and how to fix it.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import os
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from sendit_helpers.core.errors import SettingsError
from sendit_helpers.core.resources import shipped

DEFAULT_PARAMS = shipped("params/default.yml")

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n", ""}


@dataclass(frozen=True)
class Setting:
    """Declaration of one setting (its default and documentation live in default.yml)."""

    name: str
    kind: type
    choices: tuple[str, ...] = ()
    secret: bool = False
    """Secrets come from the environment only and are never written or shown."""
    minimum: float | None = None


SETTINGS: tuple[Setting, ...] = (
    # general
    Setting("WORKERS", int, minimum=0),
    Setting("EXECUTOR", str, choices=("local", "dask")),
    Setting("DASK_SCHEDULER", str),
    Setting("PROGRESS", bool),
    # inspect
    Setting("USE_DEID_FILTERS", bool),
    Setting("USE_SENDIT_FILTERS", bool),
    Setting("PIXEL_FILTER_RECIPES", list),
    Setting("SITE_FILTERS", str),
    Setting("THUMBNAILS", bool),
    Setting("THUMBNAIL_SIZE", int, minimum=16),
    Setting("MONTAGE_MAX_IMAGES", int, minimum=1),
    Setting("OCR_SCREEN", str, choices=("auto", "on", "off")),
    Setting("OCR_SAMPLE_PER_SERIES", int, minimum=0),
    Setting("OCR_PRESCREEN", bool),
    # deidentify
    Setting("USE_DEFAULT_RECIPE", bool),
    Setting("DEID_RECIPES", list),
    Setting("SAFE_PRIVATE_TAGS", list),
    Setting("QUARANTINE_FLAGGED", bool),
    Setting("IDENTIFIER_PROVIDER", str, choices=("local", "crosswalk", "rest")),
    Setting("ENTITY_PREFIX", str),
    Setting("MAX_JITTER_DAYS", int, minimum=1),
    Setting("CROSSWALK_CSV", str),
    Setting("IDENTIFIER_URL", str),
    Setting("IDENTIFIER_ID_SOURCE", str),
    Setting("IDENTIFIER_TIMEOUT", float, minimum=0.1),
    Setting("IDENTIFIER_RETRIES", int, minimum=0),
    Setting("IDENTIFIER_TOKEN", str, secret=True),
    Setting("SENDIT_SITE_SECRET", str, secret=True),
    # review
    Setting("REVIEWER", str),
    Setting("REVIEW_DECISIONS", str),
    Setting("AUTO_SCRUB_OCR", bool),
    # upload
    Setting("SEND_TO_ORTHANC", bool),
    Setting("ORTHANC_PROTOCOL", str, choices=("rest", "dicom")),
    Setting("ORTHANC_URL", str),
    Setting("ORTHANC_IPADDRESS", str),
    Setting("ORTHANC_PORT", int, minimum=1),
    Setting("ORTHANC_AE_TITLE", str),
    Setting("SENDIT_AE_TITLE", str),
    Setting("DICOM_ASSOCIATIONS", int, minimum=1),
    Setting("ORTHANC_USERNAME", str, secret=True),
    Setting("ORTHANC_PASSWORD", str, secret=True),
    Setting("SEND_TO_DICOMWEB", bool),
    Setting("DICOMWEB_URL", str),
    Setting("DICOMWEB_BATCH", int, minimum=1),
    Setting("DICOMWEB_USERNAME", str, secret=True),
    Setting("DICOMWEB_PASSWORD", str, secret=True),
    Setting("DICOMWEB_TOKEN", str, secret=True),
    Setting("SEND_TO_GOOGLE", bool),
    Setting("GOOGLE_CLOUD_STORAGE", str),
    Setting("GOOGLE_PROJECT_NAME", str),
    Setting("GOOGLE_STORAGE_COLLECTION", str),
    Setting("GOOGLE_APPLICATION_CREDENTIALS", str, secret=True),
    Setting("LOCAL_STORAGE_DIR", str),
    Setting("UPLOAD_AGENT", str),
    Setting("UPLOAD_THREADS", int, minimum=1),
    Setting("UPLOAD_RETRIES", int, minimum=0),
)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
#: The secret settings (credentials, tokens, the site secret): from the environment only.
SECRETS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.secret)


def _bound(name: str) -> Any:
    """A dataclass field holding the declared setting ``name`` (secrets left out of repr)."""
    return field(metadata={"setting": name}, repr=not BY_NAME[name].secret)


@dataclass(frozen=True)
class RunSettings:
    """How stages run: workers, executor, progress bars."""

    workers: int = _bound("WORKERS")
    executor: str = _bound("EXECUTOR")
    dask_scheduler: str = _bound("DASK_SCHEDULER")
    progress: bool = _bound("PROGRESS")


@dataclass(frozen=True)
class InspectSettings:
    """Inputs screening: pixel filters, site rules, thumbnails."""

    use_deid_filters: bool = _bound("USE_DEID_FILTERS")
    use_sendit_filters: bool = _bound("USE_SENDIT_FILTERS")
    pixel_filter_recipes: tuple[str, ...] = _bound("PIXEL_FILTER_RECIPES")
    site_filters: str = _bound("SITE_FILTERS")
    thumbnails: bool = _bound("THUMBNAILS")
    thumbnail_size: int = _bound("THUMBNAIL_SIZE")
    montage_max_images: int = _bound("MONTAGE_MAX_IMAGES")


@dataclass(frozen=True)
class DeidSettings:
    """De-identification recipe and quarantine."""

    use_default_recipe: bool = _bound("USE_DEFAULT_RECIPE")
    recipes: tuple[str, ...] = _bound("DEID_RECIPES")
    safe_private_tags: tuple[str, ...] = _bound("SAFE_PRIVATE_TAGS")
    quarantine_flagged: bool = _bound("QUARANTINE_FLAGGED")
    max_jitter_days: int = _bound("MAX_JITTER_DAYS")


@dataclass(frozen=True)
class PseudonymSettings:
    """Identifier provider and the site secret."""

    provider: str = _bound("IDENTIFIER_PROVIDER")
    entity_prefix: str = _bound("ENTITY_PREFIX")
    crosswalk_csv: str = _bound("CROSSWALK_CSV")
    url: str = _bound("IDENTIFIER_URL")
    id_source: str = _bound("IDENTIFIER_ID_SOURCE")
    timeout: float = _bound("IDENTIFIER_TIMEOUT")
    retries: int = _bound("IDENTIFIER_RETRIES")
    token: str = _bound("IDENTIFIER_TOKEN")
    site_secret: str = _bound("SENDIT_SITE_SECRET")


@dataclass(frozen=True)
class ReviewSettings:
    """Review and OCR screening."""

    reviewer: str = _bound("REVIEWER")
    decisions: str = _bound("REVIEW_DECISIONS")
    auto_scrub_ocr: bool = _bound("AUTO_SCRUB_OCR")
    ocr_screen: str = _bound("OCR_SCREEN")
    ocr_sample_per_series: int = _bound("OCR_SAMPLE_PER_SERIES")
    ocr_prescreen: bool = _bound("OCR_PRESCREEN")


@dataclass(frozen=True)
class OrthancSettings:
    """The Orthanc target (REST or DICOM C-STORE)."""

    send: bool = _bound("SEND_TO_ORTHANC")
    protocol: str = _bound("ORTHANC_PROTOCOL")
    url: str = _bound("ORTHANC_URL")
    ipaddress: str = _bound("ORTHANC_IPADDRESS")
    port: int = _bound("ORTHANC_PORT")
    ae_title: str = _bound("ORTHANC_AE_TITLE")
    calling_ae_title: str = _bound("SENDIT_AE_TITLE")
    associations: int = _bound("DICOM_ASSOCIATIONS")
    username: str = _bound("ORTHANC_USERNAME")
    password: str = _bound("ORTHANC_PASSWORD")


@dataclass(frozen=True)
class DicomwebSettings:
    """The DICOMweb (STOW-RS) target."""

    send: bool = _bound("SEND_TO_DICOMWEB")
    url: str = _bound("DICOMWEB_URL")
    batch: int = _bound("DICOMWEB_BATCH")
    username: str = _bound("DICOMWEB_USERNAME")
    password: str = _bound("DICOMWEB_PASSWORD")
    token: str = _bound("DICOMWEB_TOKEN")


@dataclass(frozen=True)
class GoogleSettings:
    """The Google Cloud Storage + Datastore target."""

    send: bool = _bound("SEND_TO_GOOGLE")
    bucket: str = _bound("GOOGLE_CLOUD_STORAGE")
    project: str = _bound("GOOGLE_PROJECT_NAME")
    collection: str = _bound("GOOGLE_STORAGE_COLLECTION")
    credentials: str = _bound("GOOGLE_APPLICATION_CREDENTIALS")


@dataclass(frozen=True)
class LocalSettings:
    """The local store (used when no remote target is on)."""

    storage_dir: str = _bound("LOCAL_STORAGE_DIR")


@dataclass(frozen=True)
class TargetSettings:
    """Every upload target."""

    orthanc: OrthancSettings
    dicomweb: DicomwebSettings
    google: GoogleSettings
    local: LocalSettings


@dataclass(frozen=True)
class UploadSettings:
    """Upload agent, threads and retries."""

    agent: str = _bound("UPLOAD_AGENT")
    threads: int = _bound("UPLOAD_THREADS")
    retries: int = _bound("UPLOAD_RETRIES")


#: The typed groups on :class:`Settings`, attribute name -> dataclass.
GROUPS: dict[str, type] = {
    "run": RunSettings,
    "inspect": InspectSettings,
    "deid": DeidSettings,
    "pseudonyms": PseudonymSettings,
    "review": ReviewSettings,
    "targets": TargetSettings,
    "upload": UploadSettings,
}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    """Instantiate the group ``cls`` from resolved ``NAME -> value`` (lists become tuples)."""
    kwargs: dict[str, Any] = {}
    for item in fields(cls):
        name = item.metadata.get("setting")
        if name is None:
            kwargs[item.name] = _build(_hints(cls)[item.name], values)
            continue
        value = values[name]
        kwargs[item.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def bound_fields(cls: type = TargetSettings) -> Iterator[tuple[str | None, str, Any]]:
    """Yield ``(setting name, dotted attribute, annotated type)`` for every typed field.

    The name is ``None`` for a field bound to no declared setting (the check test fails).

    Parameters
    ----------
    cls : type, optional
        A group dataclass; :data:`GROUPS` is walked when ``cls`` is :class:`Settings`.
    """
    roots = GROUPS.items() if cls is Settings else [("", cls)]
    for prefix, group in roots:
        for item in fields(group):
            path = f"{prefix}.{item.name}" if prefix else item.name
            kind = _hints(group)[item.name]
            name = item.metadata.get("setting")
            if name is None and isinstance(kind, type) and is_dataclass(kind):
                for sub, subpath, subkind in bound_fields(kind):
                    yield sub, f"{path}.{subpath}", subkind
            else:
                yield name, path, kind


@dataclass(frozen=True)
class Settings(Mapping[str, Any]):
    """Resolved settings: typed groups per concern, plus where each value came from.

    Read ``settings.targets.orthanc.url`` and the like.  The ``NAME -> value`` mapping
    stays for fingerprints, receipts and notebooks' display (:meth:`public`).
    """

    resolved: dict[str, Any] = field(repr=False)
    sources: dict[str, str] = field(default_factory=dict, repr=False)
    run: RunSettings = field(init=False, repr=False, compare=False)
    inspect: InspectSettings = field(init=False, repr=False, compare=False)
    deid: DeidSettings = field(init=False, repr=False, compare=False)
    pseudonyms: PseudonymSettings = field(init=False, repr=False, compare=False)
    review: ReviewSettings = field(init=False, repr=False, compare=False)
    targets: TargetSettings = field(init=False, repr=False, compare=False)
    upload: UploadSettings = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for attribute, group in GROUPS.items():
            object.__setattr__(self, attribute, _build(group, self.resolved))

    def __getitem__(self, key: str) -> Any:
        return self.resolved[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.resolved)

    def __len__(self) -> int:
        return len(self.resolved)

    def __repr__(self) -> str:
        return f"Settings({self.public()!r})"

    __str__ = __repr__

    def public(self) -> dict[str, Any]:
        """Settings safe to show or save: secrets replaced by ``"***"`` when set."""
        return {k: ("***" if BY_NAME[k].secret and v else v) for k, v in self.resolved.items()}


@functools.cache
def _defaults() -> dict[str, Any]:
    source = f"params file {DEFAULT_PARAMS}"
    data = _read_params(DEFAULT_PARAMS)
    return {str(k): coerce(BY_NAME[str(k)], v, source) for k, v in data.items()}


def typed(settings: Mapping[str, Any]) -> Settings:
    """The typed view of ``settings``: itself when resolved by :func:`load_settings`.

    A plain mapping (a caller's or a test's partial ``NAME -> value`` dict) is completed
    from ``params/default.yml`` (a ``None`` value counts as missing) and converted to the
    declared types, without the cross-setting validation of :func:`load_settings`;
    undeclared names are ignored.  A secret the mapping lacks comes from the environment,
    as in :func:`load_settings` (secrets come from the environment only): this is where
    credentials are read, the targets take them from the typed groups.

    Parameters
    ----------
    settings : Mapping[str, Any]
        Resolved :class:`Settings` or a plain mapping.

    Returns
    -------
    Settings

    Raises
    ------
    SettingsError
        A value that does not convert to its declared type.
    """
    if isinstance(settings, Settings):
        return settings
    values = dict(_defaults())
    for secret in SECRETS:
        if settings.get(secret.name) is None and secret.name in os.environ:
            values[secret.name] = _convert(secret.kind, os.environ[secret.name])
    source = "settings given to the function"
    for name, raw in settings.items():
        setting = BY_NAME.get(str(name))
        if setting is None or raw is None:
            continue
        try:
            values[setting.name] = _convert(setting.kind, raw)
        except (TypeError, ValueError):
            shown = "(hidden)" if setting.secret else repr(raw)
            raise SettingsError(
                f"{setting.name}: {shown} from {source} is not a valid "
                f"{setting.kind.__name__}; pass a {setting.kind.__name__}"
            ) from None
    return Settings(values, {name: "given" for name in settings if name in BY_NAME})


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, BY_NAME, n=1)
    return f"; did you mean {close[0]}?" if close else "; see params/default.yml for the list"


def coerce(setting: Setting, value: Any, source: str) -> Any:
    """Convert ``value`` to the setting's type, or raise :class:`SettingsError`.

    Parameters
    ----------
    setting : Setting
        The declaration.
    value : Any
        A YAML value, or a string from the environment or the command line.
    source : str
        Where the value came from, for the message (e.g. ``"environment variable"``).
    """
    name = setting.name
    shown = "(hidden)" if setting.secret else repr(value)
    try:
        result = _convert(setting.kind, value)
    except (TypeError, ValueError):
        raise SettingsError(
            f"{name}: {shown} from {source} is not a valid {setting.kind.__name__}; "
            f"fix it in {source} (see params/default.yml for the expected form)"
        ) from None
    if setting.choices and result not in setting.choices:
        raise SettingsError(
            f"{name}: {shown} from {source} is not one of {', '.join(setting.choices)}; "
            f"set {name} to one of them"
        )
    if setting.minimum is not None and result < setting.minimum:
        raise SettingsError(
            f"{name}: {shown} from {source} is below the minimum {setting.minimum:g}; "
            f"set {name} to at least that"
        )
    return result


def _convert(kind: type, value: Any) -> Any:
    if value is None:
        return [] if kind is list else ("" if kind is str else None)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(value)
    if kind is list:
        if isinstance(value, list):
            return [str(v) for v in value]
        text = str(value).strip()
        return [part.strip() for part in text.split(",") if part.strip()]
    if kind is int and isinstance(value, float | bool):
        raise ValueError(value)
    return kind(value)


#: Most values a params file may expand to through YAML anchors and aliases (``&a``/``*a``):
#: a few aliased lists are fine, an "alias bomb" that grows to gigabytes is refused.
MAX_YAML_NODES = 10_000


#: Parsed params files by the SHA-256 of their bytes (what the parse depends on), process-wide:
#: a warm kernel reads ``params/default.yml`` once per notebook, parsing it only once.
_PARSED: dict[bytes, dict[str, Any]] = {}

#: At most this many parsed files are kept (a run uses a handful).
_PARSED_MAX = 64


def _read_params(path: Path) -> dict[str, Any]:
    """Read one params file; every failure is a :class:`SettingsError` naming file and line.

    The parse is cached by the file's content (a changed file is parsed again);
    each call returns its own copy.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SettingsError(f"params file {path} does not exist; check the --params path") from None
    except OSError as exc:
        raise SettingsError(
            f"params file {path} cannot be read ({type(exc).__name__}: {exc.strerror}); "
            "check the path and that the file is readable by this user"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SettingsError(
            f"params file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}); "
            "save it as UTF-8"
        ) from None
    key = hashlib.sha256(raw).digest()
    cached = _PARSED.get(key)
    if cached is None:
        cached = _parse_params(path, text)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[key] = cached
    return copy.deepcopy(cached)


def _parse_params(path: Path, text: str) -> dict[str, Any]:
    """Parse one params file's text; every failure is a :class:`SettingsError`."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, path)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise SettingsError(
            f"params file {path} is not valid YAML{_yaml_where(exc, text)}; "
            "fix the syntax (NAME: value per line)"
        ) from None
    except RecursionError:
        raise SettingsError(
            f"params file {path} nests values too deeply; write NAME: value per line"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(
            f"params file {path} must hold a mapping of NAME: value, found {type(data).__name__}"
        )
    return data


def _yaml_where(exc: yaml.YAMLError, text: str) -> str:
    """`` at line N`` for a YAML error, when it says where."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return f" at line {mark.line + 1}"
    position = getattr(exc, "position", None)  # reader errors (control characters)
    if isinstance(position, int):
        return f" at line {text[:position].count(chr(10)) + 1}"
    return ""


def _check_expansion(root: yaml.Node, path: Path) -> None:
    """Refuse a document whose aliases expand to more than :data:`MAX_YAML_NODES` values."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise SettingsError(
                f"params file {path} line {node.start_mark.line + 1}: a YAML alias refers to "
                "itself; write the values out instead of using & anchors and * aliases"
            )
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        if total > MAX_YAML_NODES:
            raise SettingsError(
                f"params file {path} line {node.start_mark.line + 1}: YAML aliases expand to more "
                f"than {MAX_YAML_NODES} values; write the values out instead of using & anchors "
                "and * aliases"
            )
        sizes[key] = total
        return total

    size(root)


def load_settings(
    params_files: Sequence[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting from defaults, params files, environment and overrides.

    Parameters
    ----------
    params_files : sequence of path-like
        YAML files applied in order on top of ``params/default.yml``.
    overrides : mapping, optional
        CLI flags or notebook parameters; they win over everything.
    environ : mapping, optional
        The environment (default ``os.environ``).

    Returns
    -------
    Settings

    Raises
    ------
    SettingsError
        Unknown names, wrong types, secrets in files, or missing companions.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = [
        (f"params file {DEFAULT_PARAMS}", _read_params(DEFAULT_PARAMS))
    ]
    layers += [(f"params file {p}", _read_params(Path(p))) for p in params_files]
    for source, data in layers:
        for name, raw in data.items():
            setting = _declared(str(name), source)
            if setting.secret and raw not in (None, ""):
                raise SettingsError(
                    f"{name} is a secret and must come from the environment, not from {source}; "
                    f"remove it there and export {name} instead"
                )
            values[setting.name] = coerce(setting, raw, source)
            sources[setting.name] = source
    for setting in SETTINGS:
        if setting.name in env:
            values[setting.name] = coerce(
                setting, env[setting.name], f"environment variable {setting.name}"
            )
            sources[setting.name] = "environment"
    for name, raw in (overrides or {}).items():
        setting = _declared(str(name), "command-line/notebook overrides")
        if setting.secret:
            raise SettingsError(
                f"{setting.name} is a secret and must come from the environment, not from "
                f"--set or notebook overrides (they are written into the executed notebooks); "
                f"export {setting.name} instead"
            )
        values[setting.name] = coerce(setting, raw, "command-line/notebook overrides")
        sources[setting.name] = "override"
    missing = [s.name for s in SETTINGS if s.name not in values]
    if missing:
        raise SettingsError(
            f"{DEFAULT_PARAMS} lacks {', '.join(missing)}; every setting needs a documented default"
        )
    settings = Settings(values, sources)
    validate(settings)
    return settings


def _declared(name: str, source: str) -> Setting:
    setting = BY_NAME.get(name.upper())
    if setting is None:
        raise SettingsError(f"unknown setting {name!r} in {source}{_suggest(name.upper())}")
    return setting


def _require(settings: Settings, when: str, names: Sequence[str]) -> None:
    for name in names:
        if not settings.resolved[name]:
            raise SettingsError(
                f"{when} but {name} is empty ({settings.sources.get(name, 'default')}); "
                f"set {name} in a params file or as an environment variable"
            )


#: What to do instead of putting credentials in a URL setting.
_CREDENTIAL_FIX = {
    "ORTHANC_URL": "export ORTHANC_USERNAME and ORTHANC_PASSWORD instead",
    "IDENTIFIER_URL": "export IDENTIFIER_TOKEN instead",
}


def check_no_credentials(settings: Settings) -> None:
    """Refuse URL settings that carry credentials (``http://user:password@host``).

    Settings are shown in notebooks, messages and receipts; credentials come
    from the environment's secret settings only.  The message never repeats
    the URL.

    Raises
    ------
    SettingsError
    """
    for setting in SETTINGS:
        value = settings.resolved.get(setting.name)
        if setting.secret or not isinstance(value, str) or "@" not in value:
            continue
        try:
            parts = urlsplit(value.strip())
        except ValueError:
            continue
        if parts.scheme and "@" in parts.netloc:
            fix = _CREDENTIAL_FIX.get(setting.name, "give credentials through the environment")
            raise SettingsError(
                f"{setting.name} ({settings.sources.get(setting.name, 'default')}) holds "
                f"credentials (user:password@ before the host); remove them from the URL and {fix}"
            )


def validate(settings: Settings) -> None:
    """Check settings that only make sense together."""
    check_no_credentials(settings)
    targets = settings.targets
    if targets.google.send:
        _require(
            settings,
            "SEND_TO_GOOGLE is true",
            ("GOOGLE_CLOUD_STORAGE", "GOOGLE_PROJECT_NAME", "GOOGLE_STORAGE_COLLECTION"),
        )
    if targets.dicomweb.send:
        _require(settings, "SEND_TO_DICOMWEB is true", ("DICOMWEB_URL",))
    if targets.orthanc.send:
        if targets.orthanc.protocol == "rest":
            _require(
                settings, "SEND_TO_ORTHANC is true with ORTHANC_PROTOCOL rest", ("ORTHANC_URL",)
            )
        else:
            _require(
                settings,
                "SEND_TO_ORTHANC is true with ORTHANC_PROTOCOL dicom",
                ("ORTHANC_IPADDRESS",),
            )
        if targets.orthanc.port > 65535:
            raise SettingsError(
                f"ORTHANC_PORT {targets.orthanc.port} ({settings.sources['ORTHANC_PORT']}) "
                "is not a TCP port; use 1-65535 (the original sendit used 4747)"
            )
    pseudonyms = settings.pseudonyms
    if pseudonyms.provider == "rest":
        _require(settings, "IDENTIFIER_PROVIDER is 'rest'", ("IDENTIFIER_URL",))
    if pseudonyms.provider == "crosswalk":
        _require(settings, "IDENTIFIER_PROVIDER is 'crosswalk'", ("CROSSWALK_CSV",))
        if not Path(pseudonyms.crosswalk_csv).is_file():
            raise SettingsError(
                f"CROSSWALK_CSV {pseudonyms.crosswalk_csv} ({settings.sources['CROSSWALK_CSV']}) "
                "is not a file; give the honest broker's crosswalk CSV path"
            )
    if settings.run.executor == "local" and settings.run.dask_scheduler:
        raise SettingsError(
            "DASK_SCHEDULER is set but EXECUTOR is 'local'; "
            "set EXECUTOR to 'dask' or clear DASK_SCHEDULER"
        )
    recipe_lists = (
        ("DEID_RECIPES", settings.deid.recipes),
        ("PIXEL_FILTER_RECIPES", settings.inspect.pixel_filter_recipes),
    )
    for name, recipes in recipe_lists:
        for recipe in recipes:
            if not Path(recipe).is_file():
                raise SettingsError(
                    f"{name} names {recipe} ({settings.sources[name]}), which is not a file; "
                    "fix the path or remove it from the list"
                )


def parse_override(text: str) -> tuple[str, str]:
    """Split a ``NAME=VALUE`` command-line override."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise SettingsError(
            f"--set {text!r} is not NAME=VALUE; write e.g. --set SEND_TO_ORTHANC=true"
        )
    return name.strip().upper(), value
