"""Private shapes of other projects the package relies on, checked without a server.

Each of these is behind an upper bound in ``pyproject.toml``; when a new release
changes the shape, the test here fails (fast) before a notebook run or a live
upload would, and says what to look at.

- deid (``<0.5``): :func:`deid.config.utils.load_deid`'s parsed recipe (``header``
  entries with ``action``/``field``/``value``) and ``deid.logger.bot.level``
  (``recipes`` silences deid's debug chatter with it).
- jupyter_client (``<9``): ``AsyncKernelManager._async_launch_kernel`` (``runner``
  overrides it to send the kernel's output to ``phi/notebooks/*.kernel.log``).
- pynetdicom (``<3.1``): the association's reactor thread, ``dimse.get_msg`` and
  ``dimse.msg_queue`` (``targets.dicom.ReplyGuard``), ``dul.socket.socket``
  (``TCP_NODELAY``), ``_config.STORE_SEND_CHUNKED_DATASET``, and what
  ``targets.dicom.Link`` pauses: ``_reactor_checkpoint`` / ``_is_paused`` and the
  DUL's ``_is_transport_event``, its state machine's ``current_state``.
"""

from __future__ import annotations

import inspect
import io
import socket
import threading
from pathlib import Path

import pytest

from sendit_helpers.deid.recipes import Recipe


# -- deid ------------------------------------------------------------------------------------
def test_deid_parsed_recipe_shape(tmp_path: Path) -> None:
    from deid.config.utils import load_deid

    recipe = tmp_path / "site.deid"
    recipe.write_text(
        "FORMAT dicom\n\n%header\n"
        "REPLACE PatientName var:entity_id\n"
        "REMOVE PatientID\n"
        "ADD PatientIdentityRemoved YES\n"
        "BLANK contains:Date\n"
    )
    config = load_deid(str(recipe))
    assert list(config["header"]) == [
        {"action": "REPLACE", "field": "PatientName", "value": "var:entity_id"},
        {"action": "REMOVE", "field": "PatientID"},
        {"action": "ADD", "field": "PatientIdentityRemoved", "value": "YES"},
        {"action": "BLANK", "field": "contains:Date"},
    ]


def test_deid_bot_level_silences_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    from deid.logger import bot
    from deid.logger.message import DEBUG, ERROR

    assert ERROR == -3 and isinstance(bot.level, int)  # recipes sets bot.level = -3
    err = io.StringIO()
    monkeypatch.setattr(bot, "errorStream", err)
    monkeypatch.setattr(bot, "level", DEBUG)
    bot.debug("shape check")
    assert "shape check" in err.getvalue()
    bot.level = ERROR
    bot.debug("quiet check")
    assert "quiet check" not in err.getvalue()
    with pytest.raises(SystemExit):  # recipes turns deid's exits into RecipeError
        bot.exit("shape check")


def test_recipe_load_keeps_deid_quiet_and_its_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deid.logger import bot
    from deid.logger.message import DEBUG

    err = io.StringIO()
    monkeypatch.setattr(bot, "errorStream", err)
    monkeypatch.setattr(bot, "level", DEBUG)
    recipe = tmp_path / "site.deid"
    recipe.write_text("FORMAT dicom\n\n%header\nREMOVE PatientID\n")
    Recipe.load([recipe], include_default=False, include_deid_filters=False)
    assert bot.level == DEBUG
    assert err.getvalue() == ""


# -- jupyter_client --------------------------------------------------------------------------
def test_jupyter_client_launch_hook_shape() -> None:
    from jupyter_client.launcher import launch_kernel
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_client.provisioning.local_provisioner import LocalProvisioner

    hook = AsyncKernelManager._async_launch_kernel
    assert inspect.iscoroutinefunction(hook)
    params = inspect.signature(hook).parameters
    assert list(params) == ["self", "kernel_cmd", "kw"]
    assert params["kw"].kind is inspect.Parameter.VAR_KEYWORD
    # start_kernel calls the hook with the keyword arguments it may change ...
    start = inspect.getsource(AsyncKernelManager._async_start_kernel)
    assert "self._async_launch_kernel(kernel_cmd, **kw)" in start
    # ... which reach the kernel's Popen: stdout and stderr are not scrubbed on the way
    assert "launch_kernel(kernel_cmd, **kw)" in inspect.getsource(hook)
    kept = LocalProvisioner._scrub_kwargs({"stdout": 1, "stderr": 2})
    assert kept == {"stdout": 1, "stderr": 2}
    assert {"stdout", "stderr"} <= set(inspect.signature(launch_kernel).parameters)


# -- pynetdicom ------------------------------------------------------------------------------
def test_reply_guard_keeps_the_reactor_poll_from_answers() -> None:
    pynetdicom = pytest.importorskip("pynetdicom")
    from pynetdicom.association import Association

    from sendit_helpers.targets.dicom import ReplyGuard

    assoc = Association(pynetdicom.AE(), "requestor")
    ReplyGuard.install(assoc)
    ReplyGuard.install(assoc)  # once
    guard = assoc.dimse.get_msg
    assert isinstance(guard, ReplyGuard) and not isinstance(guard.get_msg, ReplyGuard)
    answer = (1, object())
    assoc.dimse.msg_queue.put(answer)
    polled: list[object] = []
    # the reactor runs in the association's own thread and polls without blocking
    assoc.run = lambda: polled.append(assoc.dimse.get_msg(block=False))  # type: ignore[method-assign]
    assoc.start()
    assoc.join(10)
    assert polled == [(None, None)]
    assert assoc.dimse.get_msg(block=False) == answer  # the storing thread gets it


def test_pynetdicom_internals_reply_guard_and_store_rely_on() -> None:
    pynetdicom = pytest.importorskip("pynetdicom")
    from pynetdicom import _config
    from pynetdicom.association import Association
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.transport import AssociationSocket

    assert issubclass(Association, threading.Thread)  # ReplyGuard: reactor thread is the assoc
    assert "self.dimse.get_msg(block=False)" in inspect.getsource(Association._run_reactor)
    for send in (Association.send_c_store, Association.send_c_echo):
        assert "self.dimse.get_msg(block=True)" in inspect.getsource(send), send.__name__
    params = inspect.signature(DIMSEServiceProvider.get_msg).parameters
    assert list(params) == ["self", "block"] and params["block"].default is False
    assoc = Association(pynetdicom.AE(), "requestor")
    assert hasattr(assoc.dul, "socket")  # TCP_NODELAY: assoc.dul.socket.socket
    with socket.socket() as raw:
        assert AssociationSocket(assoc, client_socket=raw).socket is raw
    assert isinstance(_config.STORE_SEND_CHUNKED_DATASET, bool)
    assert "_config.STORE_SEND_CHUNKED_DATASET" in inspect.getsource(Association.send_c_store)


def test_pynetdicom_internals_the_cstore_link_relies_on() -> None:
    """targets.dicom.Link pauses the reactor and the DUL's socket polls, then ends both."""
    pynetdicom = pytest.importorskip("pynetdicom")
    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider

    assoc = Association(pynetdicom.AE(), "requestor")
    # the reactor pause pynetdicom uses around send_c_*: clear the checkpoint, wait for paused
    assert isinstance(assoc._reactor_checkpoint, threading.Event)
    assert assoc._is_paused is False
    reactor = inspect.getsource(Association._run_reactor)
    assert "self._is_paused = True" in reactor and "self._reactor_checkpoint.wait()" in reactor
    # the DUL reads the socket only when _is_transport_event() (no arguments) says so
    dul = assoc.dul
    assert isinstance(dul, DULServiceProvider)
    assert list(inspect.signature(dul._is_transport_event).parameters) == []
    assert "self._is_transport_event()" in inspect.getsource(DULServiceProvider.run_reactor)
    assert dul.state_machine.current_state == "Sta1"  # "Sta6": data transfer
    assert callable(dul.kill_dul) and callable(assoc.kill)
    assert hasattr(assoc, "acceptor") and hasattr(assoc, "accepted_contexts")
