"""Run the real ``eraserd run`` as a subprocess on loopback, for end-to-end tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from conftest import small_raw
from patience import Patience, die_with_parent

from eraserd.config import config_from_dict
from eraserd.eraser import Eraser

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_daemon_config(root: Path, source: Path, window: float = 1.0, **daemon) -> Path:
    raw = small_raw(
        root / "state",
        source,
        daemon={"port": free_port(), "batch_window_s": window, **daemon},
        executor={"backend": "local", "devices": ["cpu"]},  # the real worker pool
    )
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


LIVE: list[DaemonProc] = []
"""Every daemon started, so that none outlives the test that started it (see ``reap``)."""


def reap(keep: int = 0) -> None:
    """SIGKILL every daemon started after the first ``keep`` that is still running."""
    for d in LIVE[keep:]:
        d.kill()
        d.log.close()
    del LIVE[keep:]


class DaemonProc:
    """A real ``eraserd run``. Waits fail when the daemon dies or stops making progress (see
    ``patience.py``), not after a fixed time: ``timeout`` is how long it may go without
    using any CPU."""

    def __init__(
        self,
        config: Path,
        crashpoint: str | None = None,
        args: tuple[str, ...] = (),
        **faults: str,
    ):
        """``crashpoint``: SIGKILL at that point; ``args``: more ``eraserd run`` options;
        ``faults``: more ``eraserd.faults`` variables, e.g. ``ERASERD_FAULT="purging"``."""
        self.config = config
        cfg = yaml.safe_load(config.read_text())
        self.url = f"http://127.0.0.1:{cfg['daemon']['port']}"
        self.state = Path(cfg["state_dir"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERASERD_")}
        if crashpoint:
            env["ERASERD_CRASHPOINT"] = crashpoint
        env.update(faults)
        self.log = open(config.parent / "daemon.log", "ab")
        self.proc = subprocess.Popen(
            [str(BIN / "eraserd"), "run", "--config", str(config), *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent,  # no orphan even if pytest itself is killed
        )
        LIVE.append(self)

    @property
    def token(self) -> str:
        return (self.state / "api-token").read_text().strip()

    def wait_ready(self, timeout: float = 180.0) -> None:
        patience = Patience(self.proc.pid, stall=timeout)
        while (why := patience.expired()) is None:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode}: " + self.log_text()[-3000:]
                )
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"daemon did not become ready ({why}): " + self.log_text()[-3000:])

    def log_text(self) -> str:
        return (self.config.parent / "daemon.log").read_text(errors="replace")

    def call(
        self,
        method: str,
        path: str,
        body=None,
        data=None,
        headers=None,
        token: str | None = "default",
    ) -> tuple[int, dict]:
        hdrs = dict(headers or {})
        if token == "default":
            token = self.token
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def wait_for(self, predicate, timeout: float = 120.0, what: str = "condition"):
        patience = Patience(self.proc.pid, stall=timeout)
        while (why := patience.expired()) is None:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon died while waiting for {what}: " + self.log_text()[-3000:]
                )
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"gave up waiting for {what} ({why}): " + self.log_text()[-3000:])

    def wait_exit(self, timeout: float = 120.0) -> int:
        patience = Patience(self.proc.pid, stall=timeout)
        while self.proc.poll() is None:
            if (why := patience.expired()) is not None:
                raise AssertionError(f"daemon did not exit ({why}): " + self.log_text()[-3000:])
            time.sleep(0.2)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=60)

    def stop(self) -> int:
        """SIGTERM and wait for a clean exit; a daemon that hangs is killed, then reported."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.wait_exit()
            finally:
                self.kill()
        self.log.close()
        return self.proc.returncode


def ctl(*args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(BIN / "eraserctl"), *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"eraserctl {args} failed ({proc.returncode}): {proc.stderr}")
    return proc


def built_state(tmp_path_factory) -> Path:
    """Where the session keeps its prebuilt first version (see ``prebuilt_config``)."""
    return tmp_path_factory.getbasetemp() / "daemon-built-state"


def prebuilt_config(root: Path, source: Path, backbone, built: Path, **daemon) -> Path:
    """A daemon config whose state already holds a first version (no build at start).

    The version is built in-process on the session's backbone, once: the state is kept at
    ``built`` and copied for later callers. The executor is not part of any fingerprint, and
    nothing in the state dir names its own path.
    """
    config = write_daemon_config(root, source, **{"window": 1.0, **daemon})
    raw = yaml.safe_load(config.read_text())
    if not built.exists():
        cfg = config_from_dict({**raw, "executor": {"backend": "inline"}})
        with Eraser(cfg, backbone) as e:
            e.build()
        shutil.copytree(cfg.state_dir, built)
    else:
        shutil.copytree(built, raw["state_dir"])
    return config


def start_published_daemon(root: Path, source: Path, backbone, built: Path) -> DaemonProc:
    """A real daemon (one CPU worker process) that has published one batch."""
    d = DaemonProc(prebuilt_config(root, source, backbone, built))
    try:
        d.wait_ready()
        code, r = d.call(
            "POST", "/v1/deletions", {"sample_ids": ["s0004"], "subject_ids": ["subj020"]}
        )
        assert code == 202, r
        d.wait_for(
            lambda: d.call("GET", f"/v1/deletions/{r['id']}")[1]["state"] == "published",
            what="the first batch",
        )
    except BaseException:
        d.stop()
        raise
    return d
