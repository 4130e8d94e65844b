"""Journal-native logging: under systemd each record reaches a (real, socket-bound) journal
receiver with its syslog priority and structured fields; elsewhere lines are unchanged."""

from __future__ import annotations

import array
import json
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import structlog

from rotatord.observe import journal
from rotatord.observe.logging import configure_logging, get_logger


def parse(payload: bytes) -> dict[str, str]:
    """Decode journald's native datagram format (both the text and the binary form)."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(payload):
        nl = payload.index(b"\n", i)
        line = payload[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            i = nl + 1
        else:
            (size,) = struct.unpack("<Q", payload[nl + 1 : nl + 9])
            start = nl + 9
            fields[line.decode()] = payload[start : start + size].decode()
            assert payload[start + size : start + size + 1] == b"\n"
            i = start + size + 1
    return fields


class Receiver:
    """A datagram socket standing in for /run/systemd/journal/socket (memfds included)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind(str(path))
        self.sock.settimeout(5)

    def next(self) -> dict[str, str]:
        fds = array.array("i")
        data, anc, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
        if fds:
            fd = fds[0]
            try:
                size = os.fstat(fd).st_size
                data = os.pread(fd, size, 0)
            finally:
                os.close(fd)
        return parse(data)


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A journal receiver the logging setup sends to."""
    path = tmp_path / "journal.sock"
    monkeypatch.setattr(journal, "JOURNAL_SOCKET", str(path))
    recv = Receiver(path)
    with recv.sock:
        yield recv


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


def _journal_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IO[str]:
    stream = open(tmp_path / "stream.log", "w+")  # noqa: SIM115 - closed by the test
    st = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    return stream


@pytest.mark.parametrize(
    ("level", "event", "want"),
    [
        ("info", "alarm", journal.CRIT),
        ("info", "rolled_back", journal.WARNING),
        ("info", "config_rejected", journal.ERR),
        ("error", "config_rejected", journal.ERR),
        ("info", "rotation_failed", journal.ERR),
        ("info", "reload_failed", journal.WARNING),
        ("info", "probe_failed", journal.WARNING),
        ("info", "budget_exhausted", journal.WARNING),
        ("info", "rotation_finished", journal.INFO),
        ("info", "daemon_started", journal.NOTICE),
        ("error", "rotation_finished", journal.ERR),
        ("warning", "anything", journal.WARNING),
        ("critical", None, journal.CRIT),
        ("exception", "x", journal.ERR),
        ("debug", None, journal.DEBUG),
        ("debug", "alarm", journal.CRIT),
        ("nonsense", None, journal.INFO),
    ],
)
def test_priority_is_the_more_severe_of_level_and_event(
    level: str, event: str | None, want: int
) -> None:
    """Each level and audit event maps to its syslog priority; the more severe one wins."""
    assert journal.priority_for(level, event) == want


def test_records_reach_the_journal_with_priority_and_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None, receiver: Receiver
) -> None:
    """With $JOURNAL_STREAM naming our stream, records go to the journal socket natively:
    PRIORITY from level/event, fields as ROTATORD_*, MESSAGE the usual JSON line; nothing is
    written to the stream itself."""
    stream = _journal_stream(tmp_path, monkeypatch)
    with stream:
        configure_logging("json", stream=stream)
        log = get_logger("rotatord.audit")
        log.info("rolled_back", audit=True, service="web", rotation_id="r1", ok=False)
        log.info("alarm", audit=True, service="web", problem="rollback did not restore service")
        log.info("rotation_finished", audit=True, service="web", outcome="rotated")
        logging.getLogger("apscheduler.scheduler").warning("job %s missed", "web")
        log.info("multi", detail="line one\nline two")

        rolled, alarm, finished, foreign, multi = (receiver.next() for _ in range(5))
        assert stream.tell() == 0 and not (tmp_path / "stream.log").read_text()

    assert rolled["PRIORITY"] == "4"
    assert rolled["ROTATORD_EVENT"] == "rolled_back"
    assert rolled["ROTATORD_SERVICE"] == "web"
    assert rolled["ROTATORD_ROTATION_ID"] == "r1"
    assert rolled["ROTATORD_OK"] == "false"
    assert rolled["SYSLOG_IDENTIFIER"] == "rotatord"
    message = json.loads(rolled["MESSAGE"])
    assert message["event"] == "rolled_back" and message["service"] == "web"
    assert alarm["PRIORITY"] == "2" and alarm["ROTATORD_PROBLEM"].startswith("rollback did")
    assert finished["PRIORITY"] == "6"
    assert foreign["PRIORITY"] == "4"
    assert foreign["ROTATORD_LOGGER"] == "apscheduler.scheduler"
    assert "job web missed" in foreign["MESSAGE"]
    assert multi["ROTATORD_DETAIL"] == "line one\nline two"


def test_private_keys_are_redacted_in_journal_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None, receiver: Receiver
) -> None:
    """A PEM private key logged by mistake is redacted in the fields as in the message."""
    stream = _journal_stream(tmp_path, monkeypatch)
    pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----"
    with stream:
        configure_logging("json", stream=stream)
        get_logger().error("oops", blob=pem)
        got = receiver.next()
    assert "MIGHAgEAMBMG" not in repr(got)
    assert got["ROTATORD_BLOB"] == "[redacted private key]"
    assert got["PRIORITY"] == "3"


def test_a_record_larger_than_a_datagram_goes_as_a_sealed_memfd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None, receiver: Receiver
) -> None:
    """A record over the socket's datagram limit still arrives whole (as journald takes it)."""
    stream = _journal_stream(tmp_path, monkeypatch)
    big = "x" * (1 << 19)
    with stream:
        configure_logging("json", stream=stream)
        get_logger().warning("big", payload=big)
        got = receiver.next()
    assert got["ROTATORD_PAYLOAD"] == big
    assert got["PRIORITY"] == "4"


def test_without_a_journal_socket_lines_carry_a_priority_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    """If the journal socket refuses, each line goes to the stream with a ``<N>`` prefix, which
    journald's stream reader turns into the line's priority."""
    monkeypatch.setattr(journal, "JOURNAL_SOCKET", str(tmp_path / "missing.sock"))
    stream = _journal_stream(tmp_path, monkeypatch)
    with stream:
        configure_logging("json", stream=stream)
        get_logger("rotatord.audit").info("rolled_back", audit=True, service="web")
        get_logger().info("hello")
    lines = (tmp_path / "stream.log").read_text().splitlines()
    assert [line[:3] for line in lines] == ["<4>", "<6>"]
    assert json.loads(lines[0][3:])["event"] == "rolled_back"


def test_outside_systemd_lines_are_plain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    """A $JOURNAL_STREAM naming another file (inherited from a parent) changes nothing: plain
    JSON lines, no prefix."""
    other = tmp_path / "other"
    other.write_text("")
    st = os.stat(other)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    path = tmp_path / "stream.log"
    with open(path, "w") as stream:
        configure_logging("json", stream=stream)
        get_logger("rotatord.audit").info("alarm", audit=True)
    line = path.read_text().splitlines()[0]
    doc: dict[str, Any] = json.loads(line)
    assert doc["event"] == "alarm"
    with open(path) as again:
        assert journal.journal_stream_matches(again, {"JOURNAL_STREAM": "bogus"}) is False
