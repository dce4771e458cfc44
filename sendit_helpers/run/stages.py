"""The pipeline, declared once: every stage's notebook, upstream, products, settings and help.

Everything that names a stage reads :data:`STAGES`: the runner (which notebook),
``sendit run`` (the order, from each stage's ``upstream``; the extra notebook
parameters; the fingerprint, which covers only the settings a stage declares,
plus the files it declares as ``watched``), the ``sendit`` command (one
subcommand per stage with its help and options), the parameters cell of each
notebook (``scripts/generate_notebook_params.py`` writes it, a test checks it)
and the stage table of ``docs/architecture.md`` (:func:`markdown_table`, checked by
a test).  Adding a stage means adding a row here and its notebook.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sendit_helpers.core.resources import shipped


class Stage(StrEnum):
    """The stages, in pipeline order (query last: it is not part of ``sendit run``)."""

    INSPECT = "inspect"
    DEIDENTIFY = "deidentify"
    REVIEW = "review"
    UPLOAD = "upload"
    QUERY = "query"

    @property
    def notebook(self) -> str:
        """File name of the stage's notebook."""
        return STAGES[self].notebook

    @property
    def spec(self) -> StageSpec:
        """The stage's declaration."""
        return STAGES[self]

    def source(self) -> Path:
        """The committed (output-free) notebook."""
        return shipped(f"notebooks/{self.notebook}")


@dataclass(frozen=True)
class Param:
    """One notebook parameter: a line ``name: kind = default  # help`` of the parameters cell."""

    name: str
    kind: str
    default: str
    """The default as Python source (``'""'``, ``"[]"``, ``"True"``)."""
    help: str

    def line(self) -> str:
        """The parameters-cell line."""
        return f"{self.name}: {self.kind} = {self.default}  # {self.help}"


@dataclass(frozen=True)
class Option:
    """A stage command's own option that sets one setting (``sendit review --decisions``)."""

    flag: str
    metavar: str
    setting: str
    help: str
    path: bool = False
    """The value is a file: it is resolved to an absolute path."""


#: Parameters every notebook has (the first lines of each parameters cell).
COMMON_PARAMS: tuple[Param, ...] = (
    Param(
        "batch_dir",
        "str",
        '""',
        "batch folder (one study); empty means the demo sample batch, made on first use",
    ),
    Param(
        "work_dir",
        "str",
        '""',
        "work folder; empty means the demo work folder beside the sample batch",
    ),
    Param(
        "params_files",
        "list",
        "[]",
        "params YAML files applied on top of params/default.yml, in order",
    ),
    Param(
        "overrides",
        "dict",
        "{}",
        'settings that win over files and environment, e.g. {"WORKERS": 2}',
    ),
)

#: Settings that change how fast a stage runs or how it shows progress, not what it
#: writes: no stage declares them and no fingerprint covers them.
EXECUTION_SETTINGS = frozenset({"WORKERS", "EXECUTOR", "DASK_SCHEDULER", "PROGRESS"})

#: Settings that name files whose *contents* a fingerprint covers too (when the stage
#: declares the setting).  ``SITE_FILTERS`` is the site filter file
#: (:func:`~sendit_helpers.deid.siterules.site_filters_path`, a default when empty).
FILE_SETTINGS = frozenset(
    {"DEID_RECIPES", "PIXEL_FILTER_RECIPES", "CROSSWALK_CSV", "REVIEW_DECISIONS", "SITE_FILTERS"}
)

_UPLOAD_SETTINGS = (
    "SEND_TO_ORTHANC",
    "ORTHANC_PROTOCOL",
    "ORTHANC_URL",
    "ORTHANC_IPADDRESS",
    "ORTHANC_PORT",
    "ORTHANC_AE_TITLE",
    "SENDIT_AE_TITLE",
    "DICOM_ASSOCIATIONS",
    "ORTHANC_USERNAME",
    "ORTHANC_PASSWORD",
    "SEND_TO_DICOMWEB",
    "DICOMWEB_URL",
    "DICOMWEB_BATCH",
    "DICOMWEB_USERNAME",
    "DICOMWEB_PASSWORD",
    "DICOMWEB_TOKEN",
    "SEND_TO_GOOGLE",
    "GOOGLE_CLOUD_STORAGE",
    "GOOGLE_PROJECT_NAME",
    "GOOGLE_STORAGE_COLLECTION",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "LOCAL_STORAGE_DIR",
    "UPLOAD_AGENT",
    "UPLOAD_THREADS",
    "UPLOAD_RETRIES",
)


def _executed(notebook: str) -> str:
    return (
        f"Notebook: notebooks/{notebook}; executed copy: "
        f"WORK/<batch>/phi/notebooks/{notebook} (and .html)."
    )


@dataclass(frozen=True)
class StageSpec:
    """The declaration of one stage.

    Attributes
    ----------
    stage : Stage
    notebook : str
        File name under ``notebooks/``.
    module : str
        The stage's module (what its notebook calls).
    upstream : Stage or None
        The stage whose products it reads; its stamp is this stage's input
        (None: the batch's files are).
    products : tuple of str
        What it writes, as :class:`~sendit_helpers.core.layout.BatchLayout` attributes.
    settings : tuple of str
        The settings it reads; its fingerprint covers these (secrets left out) and,
        for :data:`FILE_SETTINGS`, the files' contents.
    watched : tuple of str
        Further inputs under ``phi/`` whose contents its fingerprint covers.
    params : tuple of Param
        Notebook parameters after :data:`COMMON_PARAMS`.
    run_extra : mapping
        Notebook parameters ``sendit run`` passes (review runs unattended).
    summary, help : str
        The command's one-line help and the rest of its description.
    options : tuple of Option
        The command's own options.
    waiting : bool
        Its command says how many images still wait for review.
    still_current : str
        ``module:function`` taking ``(layout, settings)``: when the stamp is current,
        whether what the stage made is still there (upload: the destinations still
        hold what the manifest calls verified); empty when the stamp suffices.
    in_run : bool
        Part of ``sendit run``.
    command : bool
        ``sendit <stage> BATCH...`` runs its notebook (query has a command of its own).
    """

    stage: Stage
    notebook: str
    module: str
    upstream: Stage | None
    products: tuple[str, ...]
    settings: tuple[str, ...]
    summary: str
    help: str = ""
    watched: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    run_extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    options: tuple[Option, ...] = ()
    waiting: bool = False
    still_current: str = ""
    in_run: bool = True
    command: bool = True

    def description(self) -> str:
        """The command's description: summary, notebook and executed copy, then ``help``."""
        text = f"{self.summary[0].upper()}{self.summary[1:]}.\n\n{_executed(self.notebook)}"
        if not self.help:
            return text
        return text + ("" if self.help.startswith("\n") else " ") + self.help

    def parameter_lines(self) -> list[str]:
        """The lines of the notebook's parameters cell."""
        return [p.line() for p in (*COMMON_PARAMS, *self.params)]


_REVIEW_HELP = (
    "\n\nThis command applies a decisions file without anyone at the screen. To look at the "
    "images and decide (draw rectangles with the mouse, one key per action), open the "
    "reviewer:\n"
    "  in JupyterLab:\n"
    "    jupyter lab notebooks/03_review_phi.ipynb\n"
    "    (set batch_dir and work_dir in its Parameters cell, then Run > Run All Cells)\n"
    "  in Voila:\n"
    "    papermill notebooks/03_review_phi.ipynb review.ipynb --prepare-only \\\n"
    "        -p batch_dir BATCH -p work_dir WORK\n"
    "    voila review.ipynb\n"
    "Decisions are saved as you make them (WORK/<batch>/phi/review/decisions.csv); run "
    "sendit upload (or sendit run) afterwards."
)

#: The pipeline.  Order is pipeline order; ``upstream`` chains them.
STAGES: Mapping[Stage, StageSpec] = MappingProxyType(
    {
        Stage.INSPECT: StageSpec(
            Stage.INSPECT,
            notebook="01_inspect.ipynb",
            module="sendit_helpers.stages.inspect",
            upstream=None,
            products=("inspect_dir", "disposition_csv"),
            settings=(
                "USE_DEID_FILTERS",
                "USE_SENDIT_FILTERS",
                "PIXEL_FILTER_RECIPES",
                "SITE_FILTERS",
                "THUMBNAILS",
                "THUMBNAIL_SIZE",
                "MONTAGE_MAX_IMAGES",
                "OCR_SCREEN",
                "OCR_SAMPLE_PER_SERIES",
                "OCR_PRESCREEN",
            ),
            summary="inventory a batch: tables, QA summary, pixel-PHI screen, montages",
        ),
        Stage.DEIDENTIFY: StageSpec(
            Stage.DEIDENTIFY,
            notebook="02_deidentify.ipynb",
            module="sendit_helpers.stages.deidentify",
            upstream=Stage.INSPECT,
            products=("release", "deid_dir", "quarantine", "gate_record", "disposition_csv"),
            settings=(
                "USE_DEFAULT_RECIPE",
                "DEID_RECIPES",
                "SAFE_PRIVATE_TAGS",
                "QUARANTINE_FLAGGED",
                "IDENTIFIER_PROVIDER",
                "ENTITY_PREFIX",
                "MAX_JITTER_DAYS",
                "CROSSWALK_CSV",
                "IDENTIFIER_URL",
                "IDENTIFIER_ID_SOURCE",
                "IDENTIFIER_TIMEOUT",
                "IDENTIFIER_RETRIES",
                "IDENTIFIER_TOKEN",
                "SENDIT_SITE_SECRET",
                "UPLOAD_AGENT",
            ),
            summary="de-identify a batch into release/ behind the leak gate",
        ),
        Stage.REVIEW: StageSpec(
            Stage.REVIEW,
            notebook="03_review_phi.ipynb",
            module="sendit_helpers.stages.review",
            upstream=Stage.DEIDENTIFY,
            products=("review_dir", "release", "quarantine", "gate_record", "disposition_csv"),
            settings=(
                "REVIEWER",
                "REVIEW_DECISIONS",
                "AUTO_SCRUB_OCR",
                "UPLOAD_AGENT",
                "THUMBNAIL_SIZE",
                "MONTAGE_MAX_IMAGES",
            ),
            watched=("review/decisions.csv",),
            params=(
                Param(
                    "interactive",
                    "bool",
                    "True",
                    "show the reviewer widgets; False applies the decisions file only",
                ),
                Param(
                    "decisions_file",
                    "str",
                    '""',
                    "CSV with item, decision, x, y, width, height; empty means REVIEW_DECISIONS",
                ),
            ),
            run_extra=MappingProxyType({"interactive": False}),
            waiting=True,
            summary="apply review decisions (a decisions file) to quarantined images",
            help=_REVIEW_HELP,
            options=(
                Option(
                    "--decisions",
                    "FILE",
                    "REVIEW_DECISIONS",
                    "decisions CSV (item, decision, x, y, width, height)",
                    path=True,
                ),
            ),
        ),
        Stage.UPLOAD: StageSpec(
            Stage.UPLOAD,
            notebook="04_upload.ipynb",
            module="sendit_helpers.stages.upload",
            upstream=Stage.REVIEW,
            products=("upload_dir",),
            settings=_UPLOAD_SETTINGS,
            summary="upload release/ to Orthanc, Google or the local store",
            help=("Images still waiting for review are not uploaded; the command says how many."),
            waiting=True,
            still_current="sendit_helpers.stages.upload:still_uploaded",
        ),
        Stage.QUERY: StageSpec(
            Stage.QUERY,
            notebook="05_query.ipynb",
            module="sendit_helpers.stages.query",
            upstream=None,
            products=(),
            settings=_UPLOAD_SETTINGS,
            summary="search uploaded images by sex, age, modality, body part, text",
            params=(
                Param(
                    "sex", "str", '""', "PatientSex to match (F, M, O; any case); empty matches all"
                ),
                Param("age_min", "int", "0", "youngest age in years"),
                Param("age_max", "int", "200", "oldest age in years"),
                Param(
                    "modality",
                    "str",
                    '""',
                    "Modality to match, e.g. CT (any case); empty matches all",
                ),
                Param(
                    "body_part",
                    "str",
                    '""',
                    "BodyPartExamined to match, e.g. CHEST (any case); empty matches all",
                ),
                Param(
                    "text",
                    "str",
                    '""',
                    "words to find in series or study descriptions; empty matches all",
                ),
                Param(
                    "jupyter_root",
                    "str",
                    '""',
                    "folder JupyterLab serves; empty means the running server's, found "
                    "automatically",
                ),
            ),
            in_run=False,
            command=False,
        ),
    }
)


def _pipeline() -> tuple[Stage, ...]:
    """The stages of ``sendit run``, ordered by ``upstream`` (each after the one it reads)."""
    order: list[Stage] = []
    pending = [s for s, spec in STAGES.items() if spec.in_run]
    while pending:
        ready = [s for s in pending if STAGES[s].upstream is None or STAGES[s].upstream in order]
        if not ready:
            raise RuntimeError(f"stages {pending} have an upstream outside sendit run or a cycle")
        order.append(ready[0])
        pending.remove(ready[0])
    return tuple(order)


#: The stages ``sendit run`` executes, in order.
PIPELINE: tuple[Stage, ...] = _pipeline()


def downstream(stage: Stage) -> list[Stage]:
    """``stage`` and every stage that reads it, directly or not, in pipeline order."""
    found = {stage}
    for other in PIPELINE:
        if STAGES[other].upstream in found:
            found.add(other)
    return [s for s in STAGES if s in found]


def markdown_table() -> str:
    """The stage table of ``docs/architecture.md`` (notebook, module, products, settings)."""
    lines = [
        "| stage | notebook | module | upstream | products (`BatchLayout.`) | settings it reads |",
        "|---|---|---|---|---|---|",
    ]
    for spec in STAGES.values():
        lines.append(
            f"| {spec.stage} | `notebooks/{spec.notebook}` | `{spec.module}` | "
            f"{spec.upstream or '-'} | {', '.join(f'`{p}`' for p in spec.products) or '-'} | "
            f"{', '.join(f'`{s}`' for s in spec.settings)} |"
        )
    return "\n".join(lines)
