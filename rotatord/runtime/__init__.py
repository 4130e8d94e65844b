"""Runtime adapters of the long-running daemon: scheduler, config watcher, control socket,
systemd notification. Each third-party runtime library lives in exactly one module here."""
