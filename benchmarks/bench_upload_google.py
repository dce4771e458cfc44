"""Upload stage to Google (Storage + Datastore) vs the original sequential loop, over latency.

On the same gated release as ``bench_upload_orthanc.py`` (by default the ~500
images the recipe releases from a 1,000-image 512x512 CT corpus, cached under
``benchmarks/out/``).  fake-gcs-server and the Datastore
emulator run locally; each sits behind ``latency_proxy.py``, which adds
``--latency`` seconds (default 0.05) to every request, as a remote cloud would.
Before each run fake-gcs-server is restarted (in-memory: empty) and the
Datastore emulator reset; after it, every object and every Image record must
be there:

* ``sequential loop``: what the original sendit did, with the official clients:
  for each image, upload its Storage object (``projectPrivate``), then put its
  Datastore Image entity, one by one (plus one put per Collection / Entity);
* ``sendit google``: :func:`sendit_helpers.stages.upload.upload_batch` with
  ``SEND_TO_GOOGLE`` (parallel create-once uploads, Datastore writes in bounded
  concurrent batch commits, then the verification: one listing per entity and
  batched lookups, and the manifest).

Ratios are to the sequential loop from the same run.  Goal (issue 5): >= 8x.

Run: ``.venv/bin/python benchmarks/bench_upload_google.py [--files N --latency S --threads T]``
"""

# ruff: noqa: E501  (report lines are long f-strings; wrapping them would not help reading)

from __future__ import annotations

import importlib
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import _common as c
from bench_upload_orthanc import environ, gated_release, reset_manifest, table_rows, upload_settings
from latency_proxy import ProxyProcess

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.servers when run as a script

from sendit_helpers.stages.upload import load_release, upload_batch  # noqa: E402
from sendit_helpers.targets import Entity, Item  # noqa: E402
from sendit_helpers.targets.base import is_free_text, object_name, plain  # noqa: E402
from tests.servers import DatastoreEmulator, FakeGcsServer  # noqa: E402

PROJECT = "sendit-bench"
COLLECTION = "IRB41449"


def _google() -> tuple[Any, Any, Any]:
    """The official clients (untyped modules): storage, datastore, AnonymousCredentials."""
    storage = importlib.import_module("google.cloud.storage")
    datastore = importlib.import_module("google.cloud.datastore")
    creds = importlib.import_module("google.auth.credentials")
    return storage, datastore, creds.AnonymousCredentials


def sequential_loop(bucket_name: str, items: Sequence[Item], entities: Sequence[Entity]) -> None:
    """The original sendit upload: one object, then one Datastore put, per image."""
    storage, datastore, anonymous = _google()
    gcs = storage.Client(project=PROJECT, credentials=anonymous())
    ds = datastore.Client(project=PROJECT)
    try:
        bucket = gcs.bucket(bucket_name)
        coll = ds.key("Collection", COLLECTION)
        ds.put(_entity(datastore, coll, {"name": COLLECTION}))
        by_entity: dict[str, list[Item]] = {}
        for item in items:
            by_entity.setdefault(item.entity_id, []).append(item)
        meta = {e.id: e.metadata for e in entities}
        for eid, images in by_entity.items():
            ent_key = ds.key("Entity", eid, parent=coll)
            ds.put(_entity(datastore, ent_key, meta.get(eid, {})))
            for item in images:
                name = object_name(COLLECTION, item)
                blob = bucket.blob(name)
                blob.upload_from_filename(
                    str(item.path),
                    content_type="application/dicom",
                    predefined_acl="projectPrivate",
                )
                props = {k: plain(v) for k, v in item.metadata.items()}
                props.update(
                    url=f"gs://{bucket_name}/{name}", md5=blob.md5_hash, crc32c=blob.crc32c,
                    size=blob.size, generation=str(blob.generation), content_type=blob.content_type,
                )  # fmt: skip
                ds.put(_entity(datastore, ds.key("Image", item.name, parent=ent_key), props))
    finally:
        gcs.close()
        ds.close()


def _entity(datastore: Any, key: Any, props: Mapping[str, Any]) -> Any:
    excluded = tuple(k for k, v in props.items() if is_free_text(k) or isinstance(v, bytes))
    entity = datastore.Entity(key=key, exclude_from_indexes=excluded)
    entity.update({k: plain(v) for k, v in props.items()})
    return entity


def count_stored(gcs_url: str, ds_host: str, bucket: str) -> tuple[int, int]:
    """(objects in the bucket, Image records in the collection), asked directly (no proxy)."""
    storage, datastore, anonymous = _google()
    with environ({"STORAGE_EMULATOR_HOST": gcs_url, "DATASTORE_EMULATOR_HOST": ds_host}):
        gcs = storage.Client(project=PROJECT, credentials=anonymous())
        ds = datastore.Client(project=PROJECT)
        try:
            objects = sum(1 for _ in gcs.list_blobs(bucket))
            query = ds.query(kind="Image", ancestor=ds.key("Collection", COLLECTION))
            query.keys_only()
            records = sum(1 for _ in query.fetch())
        finally:
            gcs.close()
            ds.close()
    return objects, records


def main(argv: list[str] | None = None) -> int:
    p = c.parser(__doc__.splitlines()[0] if __doc__ else "", files=1000, repeats=1)
    p.add_argument(
        "--latency", type=float, default=0.05, help="seconds added per request (default 0.05)"
    )
    p.add_argument(
        "--threads", type=int, default=16, help="UPLOAD_THREADS for sendit (default 16, the setting's default)"
    )
    args = p.parse_args(argv)
    layout = gated_release(args.out, args.files, args.rows)
    base = upload_settings(
        SEND_TO_GOOGLE=True, GOOGLE_PROJECT_NAME=PROJECT, GOOGLE_STORAGE_COLLECTION=COLLECTION,
        UPLOAD_THREADS=args.threads,
    )  # fmt: skip
    base["GOOGLE_CLOUD_STORAGE"] = "unused"
    items, entities = load_release(layout, base)
    n = len(items)
    warm = c.warm_cache([i.path for i in items])
    c.say(
        f"google upload benchmark: {n} released files ({warm / 1e6:.0f} MB, {args.rows}x{args.rows} CT) in {layout.release}"
    )
    c.say(
        f"  {c.machine()}; page cache warm; best of {args.repeats}; +{args.latency * 1000:.0f} ms per request "
        "(latency_proxy.py) in front of fake-gcs-server and the Datastore emulator"
    )

    with c.scratch(args.out, "google") as folder:
        gcs = FakeGcsServer("fake-gcs", folder / "gcs")
        ds = DatastoreEmulator("datastore", folder / "datastore")
        proxies: list[ProxyProcess] = []
        try:
            gcs.start()
            ds.start()
            gcs_proxy = ProxyProcess(f"127.0.0.1:{gcs.port}", args.latency).start()
            proxies.append(gcs_proxy)
            ds_proxy = ProxyProcess(ds.host, args.latency).start()
            proxies.append(ds_proxy)
            env = {
                "STORAGE_EMULATOR_HOST": f"http://{gcs_proxy.address}",
                "DATASTORE_EMULATOR_HOST": ds_proxy.address,
            }

            def fresh_bucket() -> str:
                gcs.stop()
                gcs.start()  # in-memory backend: restarting frees the last run's objects
                ds.reset()
                name = f"bench-{uuid.uuid4().hex[:10]}"
                gcs.create_bucket(name, PROJECT)
                return name

            best = {"sequential loop": float("inf"), "sendit google": float("inf")}
            with environ(env):
                for _ in range(max(1, args.repeats)):
                    for tool in best:
                        bucket = fresh_bucket()
                        start = time.perf_counter()
                        if tool == "sequential loop":
                            sequential_loop(bucket, items, entities)
                        else:
                            reset_manifest(layout)
                            manifest = upload_batch(
                                layout, {**base, "GOOGLE_CLOUD_STORAGE": bucket}, progress=False
                            )
                            if not (
                                manifest.drop_duplicates("item", keep="last")["status"]
                                == "verified"
                            ).all():
                                raise RuntimeError("sendit google: not every item verified")
                        elapsed = time.perf_counter() - start
                        stored = count_stored(gcs.url, ds.host, bucket)
                        if stored != (n, n):
                            raise RuntimeError(
                                f"{tool}: (objects, records) = {stored}, expected {n} each"
                            )
                        best[tool] = min(best[tool], elapsed)
        finally:
            for proxy in proxies:
                proxy.stop()
            gcs.kill()
            ds.kill()
            reset_manifest(layout)

    c.say()
    c.say(
        c.table(
            ["tool", "files", "seconds", "files/s", "ratio"], table_rows(best, n, "sequential loop")
        )
    )
    c.say()
    c.say(
        f"sendit: UPLOAD_THREADS={args.threads}, includes verification and the manifest. Goal: sendit >= 8x the sequential loop."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
