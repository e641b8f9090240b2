"""Operator conveniences (issue 15, item 4): the log level, shell completion, an offline
``/docs`` with the bearer token in the OpenAPI schema, and the ``submit-deletion --wait``
status line on a terminal. Pure parts in process; the rest against one real daemon."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import pty
import re
import select
import subprocess
import sys
import typing
import urllib.error
import urllib.request
from email.message import Message

import pytest
from click.testing import CliRunner
from daemon_util import BIN, DaemonProc, built_state, prebuilt_config
from patience import Patience, die_with_parent

from eraserd import ctl, logs
from eraserd.cli import main as eraserd_main
from eraserd.config import DaemonConfig, config_from_dict
from eraserd.errors import ConfigError

# ---- log level: config, CLI, the logging setup ----------------------------------------------


def test_log_level_is_a_config_key_with_a_clear_error():
    assert config_from_dict({}).daemon.log_level == "info"
    assert config_from_dict({"daemon": {"log_level": "debug"}}).daemon.log_level == "debug"
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"daemon": {"log_level": "loud"}})
    assert str(exc.value).startswith("daemon.log_level: must be one of") and "'loud'" in str(
        exc.value
    )
    choices = typing.get_args(typing.get_type_hints(DaemonConfig)["log_level"])
    assert choices == logs.LEVELS  # the config and --log-level accept the same levels


def test_an_unknown_log_level_option_is_a_usage_error(tmp_path):
    out = CliRunner().invoke(
        eraserd_main, ["run", "-c", str(tmp_path / "none.yaml"), "--log-level", "loud"]
    )
    assert out.exit_code == 2
    assert "'loud' is not one of 'debug', 'info', 'warning', 'error'" in out.output


@pytest.fixture
def restore_loggers():
    """``logs.configure`` changes process-wide loggers: restore them after the test."""
    saved = [
        (lg, lg.handlers[:], lg.level, lg.propagate)
        for lg in map(logging.getLogger, ("eraserd", "uvicorn"))
    ]
    yield
    for lg, handlers, level, propagate in saved:
        lg.handlers[:], lg.propagate = handlers, propagate
        lg.setLevel(level)


def emit_each_level() -> None:
    log = logging.getLogger("eraserd.daemon")
    log.debug("a debug line")
    log.info("an info line", extra={"fields": {"request": "del_1"}})
    log.warning("a warning line")
    logging.getLogger("uvicorn.error").error("a server error")


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        ("debug", ["debug", "info", "warning", "error"]),
        ("info", ["info", "warning", "error"]),
        ("warning", ["warning", "error"]),
        ("error", ["error"]),
    ],
)
def test_the_level_filters_eraserd_lines(restore_loggers, capsys, level, shown):
    logs.configure(False, level)  # on sys.stderr: here, capsys's
    emit_each_level()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == shown, lines
    if "info" in shown:
        assert any(line.endswith("eraserd.daemon: an info line request=del_1") for line in lines)
    assert lines[-1].endswith("error   uvicorn.error: a server error")  # uvicorn's, same format


def test_json_logs_cover_uvicorn_too(restore_loggers, capsys):
    logs.configure(True, "warning")
    emit_each_level()
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(r["level"], r["logger"]) for r in records] == [
        ("warning", "eraserd.daemon"),
        ("error", "uvicorn.error"),
    ]


def test_uvicorn_follows_the_level_and_logs_access_only_at_debug():
    assert [logs.server_log_level(lv) for lv in logs.LEVELS] == [
        "debug",
        "warning",  # at info, the banner stands for uvicorn's startup lines
        "warning",
        "error",
    ]
    assert [logs.access_log(lv) for lv in logs.LEVELS] == [True, False, False, False]
    with pytest.raises(ValueError, match="loud"):
        logs.configure(False, "loud")


# ---- shell completion ------------------------------------------------------------------------


def complete(prog: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [str(BIN / prog)],
        env={**{k: v for k, v in os.environ.items() if not k.endswith("_COMPLETE")}, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("prog", ["eraserd", "eraserctl"])
def test_shell_completion_scripts_and_a_query(prog):
    var = f"_{prog.upper()}_COMPLETE"
    scripts = {shell: complete(prog, {var: f"{shell}_source"}) for shell in ("bash", "zsh", "fish")}
    assert f"complete -o nosort -F _{prog}_completion {prog}" in scripts["bash"]
    assert scripts["zsh"].startswith(f"#compdef {prog}")
    assert f"complete --no-files --command {prog}" in scripts["fish"]
    # What the bash script asks on <TAB>: the subcommands, then an option's choices.
    words = complete(prog, {var: "bash_complete", "COMP_WORDS": f"{prog} ", "COMP_CWORD": "1"})
    expected = (
        {"run", "build", "forget", "verify", "plan"}
        if prog == "eraserd"
        else {"submit-deletion", "status", "list", "certificate", "flush", "predict"}
    )
    assert expected <= {line.split(",", 1)[1] for line in words.splitlines()}, words
    option, values = (
        ("run --log-level", set(logs.LEVELS))
        if prog == "eraserd"
        else ("list --state", {"queued", "published", "failed"})
    )
    words = complete(
        prog, {var: "bash_complete", "COMP_WORDS": f"{prog} {option} ", "COMP_CWORD": "3"}
    )
    assert values <= {line.split(",", 1)[1] for line in words.splitlines()}, words


# ---- the --wait status line ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("r", "elapsed", "line"),
    [
        (
            {"id": "del_1", "state": "received"},
            0.4,
            "del_1: [received] → queued → batched → retuning → published  0s",
        ),
        (
            {"id": "del_1", "state": "batched", "attempts": 0},
            65,
            "del_1: received → queued → [batched] → retuning → published  1m05s",
        ),
        (
            {"id": "del_1", "state": "retuning", "attempts": 3},
            3725,
            "del_1: received → queued → batched → [retuning] → published  1h02m05s, attempt 3",
        ),
        (
            {"id": "del_1", "state": "published", "attempts": 1},
            12,
            "del_1: received → queued → batched → retuning → [published]  12s",
        ),
        ({"id": "del_1", "state": "failed", "attempts": 4}, 9, "del_1: [failed]  9s"),
    ],
)
def test_wait_line(r, elapsed, line):
    assert ctl.wait_line(r, elapsed) == line


class Daemonless:
    """A client whose request is published at the first poll."""

    def __init__(self):
        self.polls = 0

    def call(self, method: str, path: str) -> dict:
        assert (method, path) == ("GET", "/v1/deletions/del_1")
        self.polls += 1
        return {"state": "published", "version": 2}


@pytest.mark.parametrize("show", [True, False])
def test_wait_draws_one_line_in_place_and_erases_it(monkeypatch, show):
    monkeypatch.setenv("COLUMNS", "41")  # a 40-character line: the status line is cut to it
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    client = Daemonless()
    r = ctl._wait(client, {"id": "del_1", "state": "queued"}, timeout=60, show=show)
    assert r == {"id": "del_1", "state": "published", "version": 2} and client.polls == 1
    line = ctl.wait_line({"id": "del_1", "state": "queued"}, 0)[:40]
    assert err.getvalue() == (f"\r{line}\x1b[K\r\x1b[K" if show else "")


# ---- one real daemon: level override, /docs, the OpenAPI schema, --wait on a terminal --------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, digits_data, lite0_32):
    """``daemon.log_level: warning`` in the config, ``--log-level debug`` on the command line."""
    root = tmp_path_factory.mktemp("operator")
    config = prebuilt_config(
        root,
        digits_data / "manifest.csv",
        lite0_32,
        built_state(tmp_path_factory),
        window=3600.0,  # nothing retunes
        log_level="warning",
    )
    d = DaemonProc(config, args=("--log-level", "debug"))
    try:
        d.wait_ready()
    except BaseException:
        d.stop()
        raise
    yield d
    d.stop()


@pytest.mark.slow
def test_log_level_on_the_command_line_overrides_the_config(daemon):
    assert daemon.call("POST", "/v1/flush")[0] == 202
    daemon.wait_for(
        lambda: "flush requested" in daemon.log_text(), what="the debug line of the flush"
    )
    log = daemon.log_text()
    assert re.search(r" debug   eraserd\.daemon: flush requested reason=manual$", log, re.M)
    assert re.search(r" info    eraserd\.daemon: daemon started ", log)  # not at warning
    # uvicorn's access log, in eraserd's format: only at debug.
    assert re.search(
        r' info    uvicorn\.access: 127\.0\.0\.1:\d+ - "GET /healthz HTTP/1\.1" 200', log
    )
    assert re.search(r'uvicorn\.access: .*"POST /v1/flush HTTP/1\.1" 202', log)


def get(url: str) -> tuple[int, Message, bytes]:
    """Status, headers (looked up in any case) and body of a GET without a token."""
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@pytest.mark.slow
def test_docs_is_one_page_that_loads_nothing_from_elsewhere(daemon):
    code, headers, body = get(daemon.url + "/docs")  # no token
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert not re.search(r"https?:|//[\w.-]", page), re.search(r".{40}(https?:|//).{40}", page)
    assert re.findall(r'(?:src|href)="([^"]*)"', page) == ["data:,", "openapi.json"]
    csp = dict(d.strip().split(" ", 1) for d in headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert len(scripts) == 1 and "<script " not in page and len(styles) == 1
    assert csp["script-src"] == sha256_source(scripts[0])  # the browser runs it, and only it
    assert csp["style-src"] == sha256_source(styles[0])
    assert 'id="token"' in page and "Authorization" in scripts[0]
    # FastAPI's CDN pages are gone: with the token, a 404; without, like any route, a 401.
    for path in ("/redoc", "/docs/oauth2-redirect"):
        assert daemon.call("GET", path)[0] == 404
        assert daemon.call("GET", path, token=None)[0] == 401


@pytest.mark.slow
def test_openapi_declares_the_bearer_token_where_it_is_needed(daemon):
    code, schema = daemon.call("GET", "/openapi.json", token=None)
    assert code == 200
    scheme = schema["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    ops = {(m, p): op for p, item in schema["paths"].items() for m, op in item.items()}
    protected = {k for k in ops if k[1].startswith("/v1/")}
    assert len(protected) == 7 and set(ops) - protected == {("get", "/healthz")}
    for key in protected:
        assert ops[key]["security"] == [{"bearer": []}], key
        assert "401" in ops[key]["responses"], key
    assert "security" not in ops[("get", "/healthz")] and "security" not in schema


@pytest.mark.slow
def test_wait_on_a_terminal_shows_the_state_then_erases_it(daemon):
    """stderr on a pseudo-terminal: the status line is drawn and erased; stdout unchanged."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERASERD_")}
    proc = subprocess.Popen(
        [str(BIN / "eraserctl"), "submit-deletion", "-c", str(daemon.config)]
        + ["--sample-id", "s0100", "--wait", "--timeout", "2"],
        stdout=subprocess.PIPE,
        stderr=slave,
        env={**env, "COLUMNS": "200"},
        preexec_fn=die_with_parent,
    )
    os.close(slave)  # eraserctl holds the only other end: its exit ends the reads below
    err = b""
    try:
        patience = Patience(proc.pid)
        while (why := patience.expired()) is None:
            if not select.select([master], [], [], 0.5)[0]:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: eraserctl exited, and its output is read
                break
            if not chunk:
                break
            err += chunk
        assert why is None, f"eraserctl --wait did not end ({why}): {err!r}"
        stdout = proc.communicate()[0].decode()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 7, err
    text = err.decode()
    rid = stdout.split(":")[0]
    drawn = f"\r{rid}: received → [queued] → batched → retuning → published  0s\x1b[K"
    assert text.startswith(drawn), text
    before, _, after = text.rpartition("\r\x1b[K")  # the erasure, then the error
    assert "[queued]" in before and "\x1b" not in after
    assert after.startswith(f"eraserctl: gave up waiting after 2s: request {rid} is still queued")
    assert stdout.startswith(f"{rid}: queued, 1 sample(s)") and "\x1b" not in stdout
