"""Upload stage to a real Orthanc vs dcmtk ``storescu``, side by side in one run.

On a gated release made from a generated CT corpus (default 1,000 uncompressed
images 512x512, of which the default recipe releases about half; the corpus
and its de-identified release are cached under ``benchmarks/out/``), with a
warm page cache.  A fresh Orthanc (started like the tests start it,
``TCP_NODELAY=1``, storage in a scratch folder) serves every
run; it is emptied (``DELETE`` every patient) before each run and must hold
every file after it, so each run really stores:

* ``storescu``: dcmtk in its best setting: one association for all files
  (``+sd +r +sp *.dcm`` over ``release/``), only the needed presentation
  contexts (``-R``), ``TCP_NODELAY=1``;
* ``sendit rest``: :func:`sendit_helpers.upload.upload_batch` with
  ``ORTHANC_PROTOCOL=rest`` (``UPLOAD_THREADS`` parallel ``POST /instances``),
  including the bulk verification (one ``GET /instances``, sampled MD5s) and the manifest;
* ``sendit dicom``: the same with ``ORTHANC_PROTOCOL=dicom`` (pooled C-STORE
  associations), verified with one REST ``GET /instances`` (IDs computed locally).

Rounds are interleaved (each round runs every tool once), the best round of
``--repeats`` counts, and ratios are to ``storescu`` from the same run.
Goal (issue 5): the upload stage >= 2x storescu.

Run: ``.venv/bin/python benchmarks/bench_upload_orthanc.py [--files N --rows R --repeats K]``
"""

# ruff: noqa: E501  (report lines are long f-strings; wrapping them would not help reading)

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _common as c

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.servers when run as a script

from sendit_helpers import deidentify, leakgate  # noqa: E402
from sendit_helpers.errors import GateError  # noqa: E402
from sendit_helpers.layout import BatchLayout  # noqa: E402
from sendit_helpers.upload import MANIFEST_NAME, upload_batch  # noqa: E402
from tests.servers import OrthancServer  # noqa: E402

STORESCU_AET = "SENDIT"


# ------------------------------------------------------------------ the shared release
def gated_release(out: Path, files: int, rows: int) -> BatchLayout:
    """A de-identified, gated release of the cached CT corpus (made on first use).

    The batch is de-identified with the default recipe under
    ``out/upload/<corpus>/``; a sibling ``.ok`` marker says it finished.  Reused as
    long as the leak gate still passes on its ``release/``.
    """
    folder = c.ensure_corpus(out, files, rows)
    work = out / "upload" / folder.name
    marker = work.with_name(work.name + ".ok")
    layout = BatchLayout.for_batch(folder, work)
    if marker.exists():
        try:
            leakgate.require_pass(layout)
            return layout
        except GateError:
            pass
    shutil.rmtree(work, ignore_errors=True)
    marker.unlink(missing_ok=True)
    work.mkdir(parents=True)
    start = time.perf_counter()
    c.say(f"de-identifying {folder.name} into {work} (cached for the next runs) ...")
    result = deidentify.deidentify_batch(layout, c.settings(WORKERS=2))
    if not result.gate.passed or result.cleaned.empty:
        raise RuntimeError(f"the leak gate did not pass on {layout.release}; see {layout.phi}")
    marker.write_text(f"{len(result.cleaned)} released, {time.perf_counter() - start:.1f} s\n")
    return layout


def release_files(layout: BatchLayout) -> list[Path]:
    """Every released ``.dcm`` file, in a stable order."""
    return sorted(layout.release.rglob("*.dcm"))


def reset_manifest(layout: BatchLayout) -> None:
    """Forget earlier uploads, so upload_batch sends every item again."""
    (layout.upload_dir / MANIFEST_NAME).unlink(missing_ok=True)


def upload_settings(**overrides: Any) -> dict[str, Any]:
    """The upload settings of a run: defaults plus ``overrides``, no progress bars."""
    base: dict[str, Any] = dict(c.settings())
    base.update(SEND_TO_ORTHANC=False, SEND_TO_GOOGLE=False, UPLOAD_THREADS=8, UPLOAD_RETRIES=2)
    base.update(overrides)
    return base


@contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def table_rows(
    results: Mapping[str, float], n: int, reference: str
) -> list[tuple[str, int, str, str, str]]:
    """``tool, files, seconds, files/s, ratio`` rows; ratio is files/s over ``reference``'s."""
    ref = c.rate(n, results[reference])
    return [
        (tool, n, f"{sec:.2f}", f"{c.rate(n, sec):.0f}", f"{c.rate(n, sec) / ref:.2f}x")
        for tool, sec in results.items()
    ]


# ------------------------------------------------------------------ the tools
def run_storescu(server: OrthancServer, release: Path) -> None:
    """dcmtk storescu: one association, every ``.dcm`` under ``release/``."""
    cmd = [
        "storescu", "-aet", STORESCU_AET, "-aec", server.aet, "-R",
        "+sd", "+r", "+sp", "*.dcm", "127.0.0.1", str(server.dicom_port), str(release),
    ]  # fmt: skip
    env = {**os.environ, "TCP_NODELAY": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed ({done.returncode}): {done.stderr[-2000:]}")


def run_sendit(layout: BatchLayout, settings: Mapping[str, Any]) -> None:
    """upload_batch with the given settings, every item verified."""
    reset_manifest(layout)
    manifest = upload_batch(layout, settings, progress=False)
    latest = manifest.drop_duplicates(["item", "target"], keep="last")
    if not (latest["status"] == "verified").all():
        raise RuntimeError(f"not every item verified: {latest['status'].value_counts().to_dict()}")


TOOLS = ("storescu", "sendit rest", "sendit dicom")
ORTHANC_ENV = {
    "ORTHANC_USERNAME": OrthancServer.user,
    "ORTHANC_PASSWORD": OrthancServer.password,
}


def run_tool(tool: str, server: OrthancServer, layout: BatchLayout, threads: int) -> float:
    """Seconds ``tool`` takes to store (and, for sendit, verify) every released file."""
    common = {
        "SEND_TO_ORTHANC": True,
        "ORTHANC_URL": server.url,
        "ORTHANC_IPADDRESS": "127.0.0.1",
        "ORTHANC_PORT": server.dicom_port,
        "ORTHANC_AE_TITLE": server.aet,
        "SENDIT_AE_TITLE": STORESCU_AET,
        "UPLOAD_THREADS": threads,
    }
    start = time.perf_counter()
    if tool == "storescu":
        run_storescu(server, layout.release)
    else:
        protocol = tool.removeprefix("sendit ")
        run_sendit(layout, upload_settings(**common, ORTHANC_PROTOCOL=protocol))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = c.parser(__doc__.splitlines()[0] if __doc__ else "", files=1000, repeats=3)
    p.add_argument("--threads", type=int, default=8, help="UPLOAD_THREADS (default 8)")
    args = p.parse_args(argv)
    if not shutil.which("storescu"):
        c.say("storescu (dcmtk) is not installed: `apt-get install -y dcmtk`")
        return 1
    layout = gated_release(args.out, args.files, args.rows)
    paths = release_files(layout)
    n = len(paths)
    warm = c.warm_cache(paths)
    c.say(
        f"orthanc upload benchmark: {n} released files ({warm / 1e6:.0f} MB, {args.rows}x{args.rows} CT) in {layout.release}"
    )
    c.say(
        f"  {c.machine()}; page cache warm; best of {args.repeats} interleaved rounds; a fresh Orthanc (empty storage) for each run"
    )

    best: dict[str, float] = {}
    with c.scratch(args.out, "orthanc") as folder, environ(ORTHANC_ENV):
        for round_ in range(max(1, args.repeats)):
            for tool in TOOLS:
                # a fresh Orthanc (empty storage) per run: DELETE of 500 instances takes > 10 s
                server = OrthancServer("orthanc", folder / f"{round_}-{tool.replace(' ', '-')}")
                server.start()
                try:
                    elapsed = run_tool(tool, server, layout, args.threads)
                    stored = server.instance_count()
                finally:
                    server.kill()  # scratch storage: no need for Orthanc's ~4 s clean shutdown
                    reset_manifest(layout)
                if stored != n:
                    raise RuntimeError(f"{tool}: Orthanc holds {stored} of {n} instances")
                best[tool] = min(best.get(tool, float("inf")), elapsed)

    c.say()
    c.say(
        c.table(["tool", "files", "seconds", "files/s", "ratio"], table_rows(best, n, "storescu"))
    )
    c.say()
    c.say(
        f"sendit: UPLOAD_THREADS={args.threads}, includes verification (one GET /instances; REST: plus sampled MD5s) and the manifest; "
        "storescu: one association, -R, TCP_NODELAY=1. Goal: sendit >= 2x storescu."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
