"""Upload stage to a real Orthanc vs dcmtk ``storescu``, side by side in one run.

On a gated release made from a generated CT corpus (default 1,000 uncompressed
images 512x512, of which the default recipe releases about half; the corpus
and its de-identified release are cached under ``benchmarks/out/``), with a
warm page cache.  Every run gets a fresh Orthanc (started like the tests start
it, ``TCP_NODELAY=1``, empty storage; killed afterwards) and must leave every
file in it.  Two server configurations, both tools against the same one:

* ``default``: the tests' configuration, storage and SQLite index on disk under
  ``benchmarks/out/scratch/`` (Orthanc's defaults: ``SyncStorageArea`` true, and
  SQLite syncs the index once per instance);
* ``tuned`` (throughput-tuned, so the disk is not the limit): storage and index
  on tmpfs (``/dev/shm``), ``SyncStorageArea`` false, ``MaximumPduLength``
  131072 (Orthanc's maximum, fewer PDUs per C-STORE for both DICOM clients).
  ``StoreMD5ForAttachments`` stays on: the REST verification reads it.

The tools:

* ``storescu``: dcmtk in its best setting: one association for all files
  (``+sd +r +sp *.dcm`` over ``release/``), only the needed presentation
  contexts (``-R``), ``TCP_NODELAY=1``;
* ``plain rest``: the issue's "plain REST with 8 threads": ``UPLOAD_THREADS``
  parallel ``POST /instances`` of the files and nothing else (no gate check, hashing,
  manifest or verification), i.e. what Orthanc accepts on this machine from a client
  that costs almost nothing -- the server's ceiling;
* ``sendit rest``: :func:`sendit_helpers.stages.upload.upload_batch` with
  ``ORTHANC_PROTOCOL=rest`` (``UPLOAD_THREADS`` parallel ``POST /instances``),
  including the leak-gate check, the bulk verification (one ``GET /instances``,
  sampled MD5s) and the manifest;
* ``sendit dicom``: the same with ``ORTHANC_PROTOCOL=dicom`` (pooled C-STORE
  associations), verified with one REST ``GET /instances`` (IDs computed locally);
* ``sendit stow``: the same with ``SEND_TO_DICOMWEB`` (STOW-RS to Orthanc's DICOMweb
  plugin, default settings: at most ``DICOMWEB_BATCH`` 50 instances per request,
  ``UPLOAD_THREADS`` requests at once, cut by ``request_chunks`` so that every thread
  has a request: 500 files go as 16 requests of 31-32), verified with the STOW-RS
  answers and one QIDO-RS series listing per study;
* ``sendit stow b10``: the same with ``DICOMWEB_BATCH=10`` set explicitly (at most ten
  per request: 500 files go as 64 requests of 7-8 in four rounds), next to the default;
* ``storescu x4`` (``--tools``, not by default): four ``storescu`` processes at once,
  each with a quarter of the files: what Orthanc ingests from several cheap C-STORE
  clients, i.e. the server's own ceiling for C-STORE.

Rounds are interleaved (each round runs every configuration and tool once), the
best round of ``--repeats`` counts, and ratios are to ``storescu`` on the same
configuration.  CPU milliseconds per file are printed for the client (this
process, or ``storescu``) and for Orthanc (its ``/proc`` counters): client and
server share this machine's cores, so ``cores / (client + Orthanc ms per file)``
bounds any client's rate.  Goals: the upload stage >= 2x storescu (issue 5); C-STORE
and STOW-RS each >= 1.5x storescu (issue 15).

Run: ``.venv/bin/python benchmarks/bench_upload_orthanc.py [--files N --rows R --repeats K --configs default,tuned]``
"""

# ruff: noqa: E501  (report lines are long f-strings; wrapping them would not help reading)

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common as c
import urllib3

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.servers when run as a script

from sendit_helpers.core.errors import GateError  # noqa: E402
from sendit_helpers.core.layout import BatchLayout  # noqa: E402
from sendit_helpers.deid import gaterecord  # noqa: E402
from sendit_helpers.run import upstream  # noqa: E402
from sendit_helpers.stages.upload import MANIFEST_NAME, upload_batch  # noqa: E402
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
            gaterecord.require_pass(layout)
            return layout
        except GateError:
            pass
    shutil.rmtree(work, ignore_errors=True)
    marker.unlink(missing_ok=True)
    work.mkdir(parents=True)
    start = time.perf_counter()
    c.say(f"de-identifying {folder.name} into {work} (cached for the next runs) ...")
    result = upstream.deidentify(layout, c.settings(WORKERS=2))
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
    base.update(SEND_TO_ORTHANC=False, SEND_TO_GOOGLE=False, UPLOAD_THREADS=16, UPLOAD_RETRIES=2)
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


def run_storescu_parallel(server: OrthancServer, release: Path, processes: int) -> None:
    """``processes`` storescu at once, each sending every ``processes``-th file."""
    files = sorted(str(p) for p in release.rglob("*.dcm"))
    procs = [
        subprocess.Popen(
            [
                "storescu",
                "-aet",
                STORESCU_AET,
                "-aec",
                server.aet,
                "-R",
                "127.0.0.1",
                str(server.dicom_port),
                *files[k::processes],
            ],  # fmt: skip
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for k in range(processes)
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"storescu failed ({proc.returncode}): {err[-2000:]!r}")


def run_plain_rest(server: OrthancServer, release: Path, threads: int) -> None:
    """The issue's "plain REST": ``threads`` parallel ``POST /instances``, nothing else.

    No leak-gate check, no hashing, no manifest, no verification: what Orthanc accepts
    from a client that costs (almost) nothing, i.e. the server's ceiling on this machine.
    """
    pool = urllib3.PoolManager(maxsize=threads + 2, retries=False, timeout=60.0)
    headers = {
        **urllib3.make_headers(basic_auth=f"{server.user}:{server.password}"),
        "Content-Type": "application/dicom",
    }

    def post(path: Path) -> None:
        answer = pool.request(
            "POST", server.url + "/instances", body=path.read_bytes(), headers=headers
        )
        if answer.status != 200:
            raise RuntimeError(f"plain rest: HTTP {answer.status} for {path.name}")

    with ThreadPoolExecutor(threads) as workers:
        list(workers.map(post, sorted(release.rglob("*.dcm"))))
    pool.clear()


def run_sendit(layout: BatchLayout, settings: Mapping[str, Any]) -> None:
    """upload_batch with the given settings, every item verified."""
    reset_manifest(layout)
    manifest = upload_batch(layout, settings, progress=False)
    latest = manifest.drop_duplicates(["item", "target"], keep="last")
    if not (latest["status"] == "verified").all():
        raise RuntimeError(f"not every item verified: {latest['status'].value_counts().to_dict()}")


STOW_SMALL = 10
"""``DICOMWEB_BATCH`` of ``sendit stow b10``: small requests set explicitly, next to the default."""
TOOLS = ("storescu", "plain rest", "sendit rest", "sendit dicom", "sendit stow",
         f"sendit stow b{STOW_SMALL}", "storescu x4")  # fmt: skip
DEFAULT_TOOLS = TOOLS[:-1]
ORTHANC_ENV = {
    "ORTHANC_USERNAME": OrthancServer.user,
    "ORTHANC_PASSWORD": OrthancServer.password,
    "DICOMWEB_USERNAME": OrthancServer.user,
    "DICOMWEB_PASSWORD": OrthancServer.password,
}
TMPFS = Path("/dev/shm")
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "tuned": {"SyncStorageArea": False, "MaximumPduLength": 131072},
}
"""Orthanc options per configuration; ``tuned`` also keeps storage and index on tmpfs."""
CONFIG_TEXT = {
    "default": "storage + SQLite index on disk, Orthanc defaults (SyncStorageArea true)",
    "tuned": "storage + index on tmpfs, SyncStorageArea false, MaximumPduLength 131072",
}


@dataclass(frozen=True)
class Timing:
    """One run: wall seconds and CPU seconds of the client and of Orthanc."""

    seconds: float
    client_cpu: float
    orthanc_cpu: float


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process plus its reaped children (storescu)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_tool(tool: str, server: OrthancServer, layout: BatchLayout, threads: int) -> Timing:
    """Time ``tool`` storing (and, for sendit, verifying) every released file."""
    common = {
        "SEND_TO_ORTHANC": True,
        "ORTHANC_URL": server.url,
        "ORTHANC_IPADDRESS": "127.0.0.1",
        "ORTHANC_PORT": server.dicom_port,
        "ORTHANC_AE_TITLE": server.aet,
        "SENDIT_AE_TITLE": STORESCU_AET,
        "UPLOAD_THREADS": threads,
        **ORTHANC_ENV,  # the credentials (resolved settings hold the empty defaults)
    }
    settings: dict[str, Any] = {}  # read before the clock starts, as a notebook has them
    if tool.startswith("sendit stow"):
        dicomweb = {"SEND_TO_DICOMWEB": True, "DICOMWEB_URL": f"{server.url}/dicom-web"}
        if tool != "sendit stow":
            dicomweb["DICOMWEB_BATCH"] = int(tool.removeprefix("sendit stow b"))
        settings = upload_settings(**{**common, **dicomweb, "SEND_TO_ORTHANC": False})
    elif tool.startswith("sendit "):
        settings = upload_settings(**common, ORTHANC_PROTOCOL=tool.removeprefix("sendit "))
    pid = server.proc.pid if server.proc is not None else 0
    orthanc0, client0, start = cpu_seconds(pid), own_cpu(), time.perf_counter()
    if tool == "storescu":
        run_storescu(server, layout.release)
    elif tool == "storescu x4":
        run_storescu_parallel(server, layout.release, 4)
    elif tool == "plain rest":
        run_plain_rest(server, layout.release, threads)
    else:
        run_sendit(layout, settings)
    elapsed = time.perf_counter() - start
    return Timing(elapsed, own_cpu() - client0, cpu_seconds(pid) - orthanc0)


def config_root(folder: Path, config: str) -> Path:
    """Where a configuration's Orthanc keeps storage and index (tmpfs for ``tuned``)."""
    if config == "tuned" and TMPFS.is_dir() and os.access(TMPFS, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="sendit-bench-", dir=TMPFS))
    return Path(tempfile.mkdtemp(prefix=f"{config}-", dir=folder))


def one_run(
    config: str, tool: str, folder: Path, layout: BatchLayout, threads: int, n: int
) -> Timing:
    """A fresh Orthanc in ``config``, ``tool`` run against it, every instance checked."""
    root = config_root(folder, config)
    server = OrthancServer("orthanc", root, overrides=dict(CONFIGS[config]))
    try:
        server.start()
        try:
            timing = run_tool(tool, server, layout, threads)
            stored = server.instance_count()
        finally:
            server.kill()  # scratch storage: no need for Orthanc's ~4 s clean shutdown
            reset_manifest(layout)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if stored != n:
        raise RuntimeError(f"{tool} ({config}): Orthanc holds {stored} of {n} instances")
    return timing


def cpu_rows(results: Mapping[str, Timing], n: int) -> list[tuple[str, str, str, str]]:
    """``tool, client ms/file, Orthanc ms/file, bound files/s`` rows (bound: all cores busy)."""
    cores = os.cpu_count() or 1
    rows = []
    for tool, t in results.items():
        client, server = 1000 * t.client_cpu / n, 1000 * t.orthanc_cpu / n
        rows.append(
            (tool, f"{client:.2f}", f"{server:.2f}", f"{1000 * cores / (client + server):.0f}")
        )
    return rows


def goal_15_line(results: Mapping[str, Timing], n: int, config: str) -> str:
    """Whether C-STORE and STOW-RS each reach 1.5x storescu on ``config`` (issue 15)."""
    ref = c.rate(n, results["storescu"].seconds)
    parts = []
    for tool in ("sendit dicom", "sendit stow", f"sendit stow b{STOW_SMALL}"):
        if tool in results:
            ratio = c.rate(n, results[tool].seconds) / ref
            parts.append(f"{tool} {ratio:.2f}x -> {'MET' if ratio >= 1.5 else 'not met'}")
    cores = os.cpu_count() or 1
    alone = [
        f"{tool.removeprefix('sendit ')} {cores * n / t.orthanc_cpu:.0f} files/s = "
        f"{cores * n / t.orthanc_cpu / ref:.2f}x storescu"
        for tool, t in results.items()
        if tool in ("sendit dicom", "sendit stow", f"sendit stow b{STOW_SMALL}") and t.orthanc_cpu > 0
    ]
    if alone:
        parts.append(
            f"server-only ceiling (Orthanc's CPU per file on all {cores} cores, a client "
            f"costing nothing): {', '.join(alone)}"
        )
    if "storescu x4" in results:
        ceiling = c.rate(n, results["storescu x4"].seconds)
        parts.append(
            f"Orthanc's C-STORE ceiling (storescu x4) {ceiling:.0f} files/s = {ceiling / ref:.2f}x"
        )
    return (
        f"goal (issue 15: C-STORE and STOW-RS >= 1.5x storescu = {1.5 * ref:.0f} files/s) on {config}: "
        + "; ".join(parts)
    )


def goal_line(results: Mapping[str, Timing], n: int, config: str) -> str:
    """Whether the best sendit protocol reaches 2x storescu on ``config``, and its CPU bound."""
    ref = c.rate(n, results["storescu"].seconds)
    tool = min((t for t in results if t.startswith("sendit")), key=lambda t: results[t].seconds)
    ratio = c.rate(n, results[tool].seconds) / ref
    verdict = "MET" if ratio >= 2 else "not met"
    per_file = (results[tool].client_cpu + results[tool].orthanc_cpu) / n
    bound = (os.cpu_count() or 1) / per_file if per_file > 0 else float("inf")
    return (
        f"goal (issue 5: sendit >= 2x storescu) on {config}: {tool} {ratio:.2f}x -> {verdict} "
        f"(2x = {2 * ref:.0f} files/s; {tool} with Orthanc on these cores can reach at most {bound:.0f})"
    )


def report(best: Mapping[str, Mapping[str, Timing]], n: int, threads: int) -> None:
    """Print, per configuration, the rate table, the CPU table and the goal line."""
    for config, results in best.items():
        c.say()
        c.say(f"Orthanc '{config}': {CONFIG_TEXT[config]}")
        seconds = {tool: t.seconds for tool, t in results.items()}
        c.say(
            c.table(
                ["tool", "files", "seconds", "files/s", "ratio"], table_rows(seconds, n, "storescu")
            )
        )
        c.say(
            c.table(
                ["tool", "client ms/file", "orthanc ms/file", "cpu bound files/s"],
                cpu_rows(results, n),
            )
        )
        c.say(goal_line(results, n, config))
        c.say(goal_15_line(results, n, config))
    c.say()
    c.say(
        f"sendit: UPLOAD_THREADS={threads}, DICOM_ASSOCIATIONS 4, DICOMWEB_BATCH 50 (at most, every thread with a request), includes the leak-gate check, verification (one GET /instances; REST: plus sampled MD5s) and the manifest; "
        f"storescu: one association, -R, TCP_NODELAY=1. CPU per file is of the best round; 'cpu bound' = {os.cpu_count()} cores / (client + orthanc ms per file); "
        f"load avg now {os.getloadavg()[0]:.1f}."
    )


def main(argv: list[str] | None = None) -> int:
    p = c.parser(__doc__.splitlines()[0] if __doc__ else "", files=1000, repeats=3)
    p.add_argument(
        "--threads", type=int, default=16, help="UPLOAD_THREADS (default 16, the setting's default)"
    )
    p.add_argument(
        "--configs",
        default="default,tuned",
        help="Orthanc configurations, comma-separated (default: default,tuned)",
    )
    p.add_argument(
        "--tools",
        default=",".join(DEFAULT_TOOLS),
        help=f"tools, comma-separated, of {','.join(TOOLS)} (default: {','.join(DEFAULT_TOOLS)}; storescu is always run)",
    )
    args = p.parse_args(argv)
    tools = [
        "storescu",
        *(
            t.strip()
            for t in args.tools.split(",")
            if t.strip() in TOOLS and t.strip() != "storescu"
        ),
    ]
    configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        c.say(f"unknown --configs {unknown}; choose from {sorted(CONFIGS)}")
        return 2
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

    best: dict[str, dict[str, Timing]] = {config: {} for config in configs}
    with c.scratch(args.out, "orthanc") as folder, environ(ORTHANC_ENV):
        for _ in range(max(1, args.repeats)):
            for config in configs:
                for tool in tools:
                    timing = one_run(config, tool, folder, layout, args.threads, n)
                    kept = best[config].get(tool)
                    if kept is None or timing.seconds < kept.seconds:
                        best[config][tool] = timing
    report(best, n, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
