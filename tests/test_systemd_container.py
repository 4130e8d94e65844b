"""rotatord.service under a real systemd (booted in a container, tests/nspawn.py): installed by
``rotatord setup-systemd``, it starts and reaches READY, renews on schedule with an nginx reload
from inside the sandbox, takes a good ``systemctl reload`` and keeps its config on a broken one,
logs alarms and rollbacks at journal priority <= warning, finishes a rotation before it stops,
and does not restart on a broken config (RestartPreventExitStatus=2).

Pebble runs on the host's loopback (the container shares the host's network namespace) with
30-second certificates, so a scheduled renewal comes about 20 s after an issuance.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pebble import PebbleServer
from tests.daemon_harness import Record, events, read_audit
from tests.nspawn import Container
from tests.servers import free_port, served_serial
from tests.unavailable import unavailable

pytestmark = pytest.mark.pebble

REPO_UNIT = Path(__file__).resolve().parent.parent / "systemd" / "rotatord.service"
VALIDITY = 30
SNI = "web.example.test"
AUDIT = "/var/log/rotatord/audit.jsonl"
CONFIG = "/etc/rotatord/rotatord.toml"
# Units the host has enabled that the minimal boot target would never start anyway; masked so a
# stray dependency cannot pull one in (nginx's default site binds 0.0.0.0:80).
MASK = ("nginx.service", "haproxy.service", "apache2.service", "named.service")


class Box:
    """The booted container with rotatord installed, nginx serving, and their ports."""

    def __init__(self, c: Container, pebble: PebbleServer, nginx_port: int) -> None:
        self.c, self.pebble, self.nginx_port = c, pebble, nginx_port
        self.dead_port = free_port()

    def config(self, web_extra: str = "", probe_port: int | None = None, more: str = "") -> str:
        return f"""
[daemon]
min_order_interval = "5s"
log_format = "json"

[acme.pebble]
directory = "{self.pebble.directory_url}"
ca_bundle = "/etc/rotatord/pebble-ca.pem"
trust_roots_url = "{self.pebble.roots_url}"

[acme.pebble.budget]
orders = 1000000
certificates = 1000000

[services.web]
domains = ["{SNI}"]
probe_deadline = 3
{web_extra}
[services.web.challenge]
listen = "127.0.0.1:{self.pebble.http_port}"
[[services.web.outputs]]
path = "/etc/nginx-rt/tls/web.crt"
format = "fullchain"
[[services.web.outputs]]
path = "/etc/nginx-rt/tls/web.key"
format = "key"
[[services.web.reload]]
signal = "HUP"
pid_file = "/run/nginx-rt.pid"
[[services.web.probe]]
address = "127.0.0.1:{probe_port or self.nginx_port}"
{more}
"""

    def write_config(self, text: str) -> None:
        path = self.c.path(CONFIG)
        tmp = path.with_name(path.name + ".new")
        tmp.write_text(text)
        # root:rotatord 0640, as setup-systemd left it (the group exists only in the container).
        os.chown(tmp, 0, self.gid("rotatord"))
        os.chmod(tmp, 0o640)
        tmp.replace(path)

    def gid(self, group: str) -> int:
        for line in self.c.path("/etc/group").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == group:
                return int(fields[2])
        raise AssertionError(f"no group {group!r} in the container")

    def audit(self) -> list[Record]:
        return read_audit(self.c.path(AUDIT))

    def wait_audit(
        self, predicate: Callable[[list[Record]], bool], what: str, timeout: float = 60
    ) -> list[Record]:
        end = time.monotonic() + timeout
        records = self.audit()
        while not predicate(records):
            if time.monotonic() > end:
                tail = self.c.sh("journalctl -u rotatord -n 40 -o cat", check=False).stdout
                seen = [(r.get("event"), r.get("service"), r.get("trigger")) for r in records[-25:]]
                raise AssertionError(f"timed out waiting for {what}; last events {seen}\n{tail}")
            time.sleep(0.1)
            records = self.audit()
        return records

    def show(self, *props: str, unit: str = "rotatord") -> dict[str, str]:
        out = self.c.sh(f"systemctl show {unit} -p {','.join(props)}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def reload(self, text: str, after: int) -> list[Record]:
        """Write ``text``, `systemctl reload`, wait for its config_loaded/config_rejected."""
        self.write_config(text)
        self.c.sh("systemctl reload rotatord")
        return self.wait_audit(
            lambda rs: any(
                r.get("event") in ("config_loaded", "config_rejected") for r in rs[after:]
            ),
            "the reload's config_loaded/config_rejected",
        )


def _nginx_conf(port: int) -> str:
    return f"""
daemon off;
worker_processes 1;
pid /run/nginx-rt.pid;
error_log /var/log/nginx-rt-error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path /var/lib/nginx-rt/body;
    proxy_temp_path /var/lib/nginx-rt/proxy;
    fastcgi_temp_path /var/lib/nginx-rt/fastcgi;
    uwsgi_temp_path /var/lib/nginx-rt/uwsgi;
    scgi_temp_path /var/lib/nginx-rt/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {SNI};
        ssl_certificate /etc/nginx-rt/tls/web.crt;
        ssl_certificate_key /etc/nginx-rt/tls/web.key;
        return 200 "ok\\n";
    }}
}}
"""


NGINX_UNIT = """
[Unit]
Description=nginx for the rotatord container test
[Service]
ExecStartPre=/usr/sbin/nginx -t -c /etc/nginx-rt/nginx.conf
ExecStart=/usr/sbin/nginx -c /etc/nginx-rt/nginx.conf
ExecReload=/bin/kill -HUP $MAINPID
"""


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    """Boot systemd, install rotatord with setup-systemd, start nginx on a placeholder pair and
    rotatord; yields once the first certificate is issued and served."""
    if os.geteuid() != 0:
        unavailable("booting systemd in a container needs root")
    for binary in ("systemd-nspawn", "nsenter", "mount"):
        if shutil.which(binary) is None:
            unavailable(f"{binary} is not installed ('apt-get install -y systemd-container')")
    if not Path("/usr/sbin/nginx").exists() or not Path("/usr/bin/python3").exists():
        unavailable("needs Debian's nginx and /usr/bin/python3")
    with PebbleServer(validity_seconds=VALIDITY) as pebble:
        c = Container(tmp_path_factory.mktemp("nspawn"))
        try:
            c.boot(mask=MASK)
            c.install_rotatord()
            nginx_port = free_port()
            b = Box(c, pebble, nginx_port)
            # A private CA bundle must live where the sandbox can read it: /etc/rotatord, not
            # /tmp (PrivateTmp=), /root or /home (ProtectHome=).
            c.path("/etc/rotatord").mkdir(parents=True, exist_ok=True)
            shutil.copy(pebble.ca_bundle, c.path("/etc/rotatord/pebble-ca.pem"))
            c.path(CONFIG).write_text(b.config())
            c.path("/etc/nginx-rt").mkdir()
            c.path("/etc/nginx-rt/nginx.conf").write_text(_nginx_conf(nginx_port))
            c.path("/var/lib/nginx-rt").mkdir()
            c.path("/etc/systemd/system/nginx-rt.service").write_text(NGINX_UNIT)
            yield b
        finally:
            c.shutdown()


def _setup_and_start(b: Box) -> None:
    unit = b.c.path("/usr/local/share/rotatord/rotatord.service")
    unit.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_UNIT, unit)
    shipped = Path("/") / unit.relative_to(b.c.root)
    setup = f"rotatord -c {CONFIG} setup-systemd --bootstrap-certs --unit-file {shipped}"
    first = b.c.sh(setup, check=False)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created    user rotatord" in first.stdout
    assert (
        "ReadWritePaths=/etc/nginx-rt/tls"
        in b.c.path("/etc/systemd/system/rotatord.service.d/50-setup-systemd.conf").read_text()
    )
    second = b.c.sh(setup, check=False)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing changed: already set up" in second.stdout
    # nginx starts on the self-signed placeholders before rotatord has issued anything.
    b.c.sh("systemctl start nginx-rt")
    end = time.monotonic() + 20
    while served_serial(b.nginx_port, SNI) is None:  # Type=simple: started is not listening
        assert time.monotonic() < end, b.c.sh("journalctl -u nginx-rt -o cat", check=False).stdout
        time.sleep(0.05)
    b.c.sh("systemctl start rotatord")  # Type=notify: returns once READY=1 was sent


def test_starts_ready_and_renews_on_schedule_with_an_nginx_reload(box: Box) -> None:
    """setup-systemd (twice: the second changes nothing), then `systemctl start` returns at
    READY; the startup issuance and a scheduled renewal both reload nginx (SIGHUP from inside
    the sandbox) and the probe sees nginx serve each new certificate."""
    _setup_and_start(box)
    state = box.show("ActiveState", "SubState", "StatusText", "User")
    assert state["ActiveState"] == "active" and state["SubState"] == "running", state
    assert "services planned" in state["StatusText"] and state["User"] == "rotatord"
    # The running unit's exposure, as PID 1 sees it (drop-in included), stays <= 2.0.
    security = box.c.sh("systemd-analyze security --no-pager rotatord").stdout
    match = re.search(r"Overall exposure level for rotatord.service: (\d+\.\d+)", security)
    assert match is not None and float(match.group(1)) <= 2.0, security[-1500:]

    def renewed(rs: list[Record]) -> bool:
        done = [r for r in events(rs, "rotation_finished", "web") if r.get("outcome") == "rotated"]
        return any(r.get("trigger") == "schedule" for r in done)

    records = box.wait_audit(renewed, "a scheduled renewal", timeout=VALIDITY * 2)
    finished = [r for r in events(records, "rotation_finished", "web") if r["outcome"] == "rotated"]
    assert [r["trigger"] for r in finished][:2] == ["startup", "schedule"]
    rid = finished[1]["rotation_id"]
    in_rotation = [r["event"] for r in records if r.get("rotation_id") == rid]
    assert "reload_succeeded" in in_rotation and "probe_succeeded" in in_rotation
    serial = int(str(finished[1]["new_serial"]), 16)
    assert served_serial(box.nginx_port, SNI) in (serial, *_later_serials(records, rid))


def _later_serials(records: list[Record], rid: str) -> list[int]:
    """Serials activated after rotation ``rid`` (renewals keep coming every ~20 s)."""
    idx = max(i for i, r in enumerate(records) if r.get("rotation_id") == rid)
    return [
        int(str(r["serial"]), 16)
        for r in records[idx:]
        if r.get("event") == "certificate_activated" and r.get("serial")
    ]


def test_reload_takes_a_good_config_and_keeps_the_old_one_on_a_broken_file(box: Box) -> None:
    """`systemctl reload` with a good file adds a service; with a broken one the daemon keeps
    running on the previous config and `systemctl status` says the config was rejected, until
    a good file is loaded again."""
    pid = box.show("MainPID")["MainPID"]
    api = '\n[services.api]\ndomains = ["api.example.test"]\n[services.api.challenge]\n'
    api += f'listen = "127.0.0.1:{box.pebble.http_port}"\n'
    n = len(box.audit())
    records = box.reload(box.config(more=api), n)
    loaded = events(records[n:], "config_loaded")
    assert loaded and loaded[0]["added"] == ["api"], records[n:]
    assert "config rejected" not in box.show("StatusText")["StatusText"]

    n = len(box.audit())
    records = box.reload("[services.web\nthis is not toml", n)
    assert events(records[n:], "config_rejected"), records[n:]
    state = box.show("ActiveState", "MainPID", "StatusText")
    assert state["ActiveState"] == "active" and state["MainPID"] == pid
    assert state["StatusText"].startswith("config rejected"), state
    assert "config rejected" in box.c.sh("systemctl status rotatord", check=False).stdout

    n = len(box.audit())
    records = box.reload(box.config(more=api), n)
    assert events(records[n:], "config_loaded")
    assert "config rejected" not in box.show("StatusText")["StatusText"]


def _journal(box: Box, *args: str) -> list[dict[str, Any]]:
    out = box.c.sh("journalctl -u rotatord -o json --no-pager " + " ".join(args)).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_alarms_and_rollbacks_reach_the_journal_at_warning_or_above(box: Box) -> None:
    """A config whose probe can never see the new certificate makes the rotation roll back and
    the rollback fail its probe too (an alarm); `journalctl -p warning -u rotatord` shows both,
    with their fields, and not the info-level lines."""
    n = len(box.audit())
    box.reload(box.config(probe_port=box.dead_port), n)
    forced = box.c.sh(f"rotatord -c {CONFIG} rotate web --force", check=False)
    assert forced.returncode == 1, forced.stdout + forced.stderr
    box.wait_audit(
        lambda rs: bool(events(rs[n:], "rolled_back", "web")) and bool(events(rs[n:], "alarm")),
        "a rollback and an alarm",
    )
    warn = _journal(box, "-p", "warning")
    by_event = {e.get("ROTATORD_EVENT"): e for e in warn}
    assert "rolled_back" in by_event and "alarm" in by_event, sorted(map(str, by_event))
    assert int(by_event["rolled_back"]["PRIORITY"]) <= 4
    assert int(by_event["alarm"]["PRIORITY"]) <= 4
    assert by_event["rolled_back"]["ROTATORD_SERVICE"] == "web"
    assert json.loads(by_event["alarm"]["MESSAGE"])["event"] == "alarm"
    assert all(int(e["PRIORITY"]) <= 4 for e in warn)
    everything = _journal(box)
    assert any(e.get("ROTATORD_EVENT") == "rotation_started" for e in everything)
    assert "rotation_started" not in by_event
    n = len(box.audit())
    box.reload(box.config(), n)


def test_stop_waits_for_the_rotation_in_flight(box: Box) -> None:
    """`systemctl stop` while a rotation's reload command runs: the rotation finishes (audited
    before daemon_stopped), the CLI that asked for it gets its result, the unit stops cleanly;
    then a broken config at start exits 2 and is not restarted (RestartPreventExitStatus=2)."""
    marker = "/var/lib/rotatord/slow-reload-started"
    slow = (
        '[[services.web.reload]]\ncommand = ["/bin/sh", "-c", '
        f'"touch {marker}; sleep 3"]\ntimeout = 30\n'
    )
    box.reload(box.config(more=slow), len(box.audit()))
    box.c.path(marker).unlink(missing_ok=True)
    rotate = box.c.popen(f"rotatord -c {CONFIG} rotate web --force")
    end = time.monotonic() + 60
    while not box.c.path(marker).exists():
        assert time.monotonic() < end, "the slow reload never started"
        assert rotate.poll() is None, rotate.communicate()
        time.sleep(0.05)
    # The rotation whose reload is sleeping now (the manual one, or a scheduled renewal that
    # got there first): started, not finished.
    before = box.audit()
    done = {r["rotation_id"] for r in events(before, "rotation_finished")}
    in_flight = [r for r in events(before, "rotation_started") if r["rotation_id"] not in done]
    assert in_flight, "no rotation in flight while its reload runs"

    box.c.sh("systemctl stop rotatord", timeout=200)

    records = box.audit()
    names = [r["event"] for r in records]
    stopped = names.index("daemon_stopped", len(before))
    for started in in_flight:
        finished = [
            i
            for i, r in enumerate(records)
            if r.get("event") == "rotation_finished" and r["rotation_id"] == started["rotation_id"]
        ]
        assert finished and finished[0] < stopped, f"{started} not finished before the stop"
        assert records[finished[0]]["outcome"] == "rotated", records[finished[0]]
    out, err = rotate.communicate(timeout=60)
    if any(r["trigger"] == "manual" for r in in_flight):
        assert rotate.returncode == 0 and "web: rotated" in out, out + err
    state = box.show("ActiveState", "Result", "ExecMainStatus")
    assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, state

    box.write_config("[services.web\nbroken")
    start = box.c.sh("systemctl start rotatord", check=False)
    assert start.returncode != 0
    state = box.show("ActiveState", "SubState", "ExecMainStatus", "NRestarts")
    assert state["ExecMainStatus"] == "2", state
    assert state["ActiveState"] == "failed", f"auto-restart on a broken config: {state}"
    assert state["NRestarts"] == "0"
    # The problems it printed before logging was set up are journal errors too.
    printed = [
        e
        for e in _journal(box, "-p", "err")
        if e.get("_TRANSPORT") == "stdout" and "rotatord.toml" in str(e.get("MESSAGE"))
    ]
    assert printed and all(e["PRIORITY"] == "3" for e in printed), _journal(box, "-n", "20")
    box.c.sh("systemctl reset-failed rotatord")
