"""Debian's apache2 for tests: its own config, pid file, mutex and logs in a temp dir, one TLS
virtual host on a free loopback port, in the foreground (``-DFOREGROUND``). ``reload_argv()``
is the graceful restart (``apache2 -k graceful``: SIGUSR1 to the pid file's parent) a rotatord
reload action runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.servers import Server, free_port

MODULES = Path("/usr/lib/apache2/modules")


class Apache(Server):
    def __init__(self, binary: str, prefix: Path, sni: str, cert_dir: Path) -> None:
        self.binary, self.prefix, self.port, self.sni = binary, prefix, free_port(), sni
        prefix.mkdir(parents=True, exist_ok=True)
        self.conf = prefix / "apache2.conf"
        self.conf.write_text(
            f"""
ServerRoot {prefix}
DefaultRuntimeDir {prefix}
PidFile {prefix}/apache2.pid
Mutex file:{prefix} default
ErrorLog {prefix}/error.log
LogLevel warn
LoadModule mpm_event_module {MODULES}/mod_mpm_event.so
LoadModule authz_core_module {MODULES}/mod_authz_core.so
LoadModule ssl_module {MODULES}/mod_ssl.so
User www-data
Group www-data
ServerName localhost
Listen 127.0.0.1:{self.port}
<VirtualHost 127.0.0.1:{self.port}>
    ServerName {sni}
    SSLEngine on
    SSLCertificateFile {cert_dir}/fullchain.pem
    SSLCertificateKeyFile {cert_dir}/privkey.pem
</VirtualHost>
"""
        )

    def reload_argv(self) -> list[str]:
        return [self.binary, "-f", str(self.conf), "-k", "graceful"]

    def start(self) -> None:
        with open(self.prefix / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen(
                [self.binary, "-f", str(self.conf), "-DFOREGROUND"],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.wait_listening(self.sni)

    def log(self) -> str:
        try:
            return (self.prefix / "error.log").read_text()[-3000:]
        except FileNotFoundError:
            return ""
