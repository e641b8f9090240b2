"""``eraserctl``: the operator's client for a running ``eraserd run`` daemon.

Exit codes are the table ``eraserd.errors.EXIT_CODES``, shared with ``eraserd``: e.g. 2 rejected
input, 4 unknown ids or request, 7 ``--wait`` gave up while the request is still pending,
8 daemon unreachable, 9 unauthorized, 1 anything else (a failed request with ``--wait``).
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from .client import Client
from .cliutil import Group
from .errors import (
    EraserdError,
    InvalidInputError,
    RequestFailedError,
    WaitTimeoutError,
    error_json,
)
from .idfile import read_ids
from .queue import RequestState
from .units import parse_duration

TERMINAL = ("published", "failed")
WAIT_TIMEOUT = WaitTimeoutError.exit_code
"""``submit-deletion --wait`` gave up: the request is still pending (not failed)."""


def parse_deadline(text: str, now: float) -> str:
    """A duration from now (``units.parse_duration``: ``90s``, ``30m``, ``72h``, ``2d``,
    ``1w`` or seconds), or an ISO 8601 time; returns ISO 8601."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        pass
    else:
        return datetime.fromtimestamp(now + seconds, tz=timezone.utc).isoformat()
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInputError(
            f"--deadline: expected a duration like 72h or 1w, or an ISO 8601 time, got {text!r}"
        ) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).isoformat()


def fail(exc: EraserdError, as_json: bool, result: dict | None = None) -> NoReturn:
    """Report ``exc`` and exit with its code (the table in ``eraserd.errors``): one line on
    stderr, or with ``--json`` one JSON object on stdout, ``{"error", "type", "exit_code"}``
    (plus the daemon's error body, or the fields of ``result``, the request it is about)."""
    if as_json:
        obj = {**(result or {}), **error_json(exc)}
        click.echo(json.dumps(obj, indent=2) if result else json.dumps(obj))
    else:
        click.echo(f"eraserctl: {exc}", err=True)
    sys.exit(exc.exit_code)


def _client_options(fn):
    @click.option(
        "--config",
        "-c",
        "config",
        type=click.Path(dir_okay=False, path_type=Path),
        help="eraserd config: gives the daemon address and token file.",
    )
    @click.option("--url", envvar="ERASERD_URL", help="Daemon URL (env ERASERD_URL).")
    @click.option("--token", envvar="ERASERD_TOKEN", help="API token (env ERASERD_TOKEN).")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @functools.wraps(fn)
    def wrapper(config, url, token, as_json, **kwargs):
        try:
            client = Client.locate(config, url, token)
            return fn(client, as_json, **kwargs)
        except EraserdError as exc:
            fail(exc, as_json)

    return wrapper


def _ago(ts: float | None, now: float) -> str:
    return "-" if ts is None else f"{now - ts:.0f}s ago"


def age(seconds: float) -> str:
    """A short age: seconds up to 2 minutes, then whole minutes, hours (from 2 h) or days
    (from 2 d): ``45s``, ``12m``, ``5h``, ``3d``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _list_line(r: dict, now: float) -> str:
    """One request of ``eraserctl list``: id, state, samples, age, version once published."""
    cols = [r["id"], r["state"], f"{r['samples']} sample(s)"]
    cols.append(f"submitted {age(now - r['created_at'])} ago")
    if r.get("version") is not None:
        cols.append(f"version {r['version']}")
    return "\t".join(cols)


def _describe(r: dict, now: float) -> str:
    line = f"{r['id']}: {r['state']}, {r['samples']} sample(s)"
    if r.get("version") is not None:
        line += f", removed in version {r['version']}"
    if r.get("reason") and r["state"] == "failed":
        line += f" ({r['reason']}; attempts {r['attempts']})"
    elif r.get("reason"):
        line += f" (retrying after: {r['reason']}; attempts {r['attempts']})"
    line += f"; submitted {_ago(r['created_at'], now)}"
    if r["state"] not in TERMINAL:
        line += f", deadline in {r['deadline'] - now:.0f}s"
    return line


PIPELINE = tuple(s.value for s in RequestState if s is not RequestState.FAILED)
"""A request's states on the way to ``published`` (``failed`` may end any of them)."""


def _clock(seconds: float) -> str:
    """Elapsed time that ticks every second: ``7s``, ``2m05s``, ``1h02m09s``."""
    h, rest = divmod(int(max(0.0, seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def wait_line(r: dict, elapsed: float) -> str:
    """The ``submit-deletion --wait`` status line: the request's states so far, the current
    one in brackets, then the time waited, e.g.
    ``del_1: received → queued → [batched] → retuning → published  12s``."""
    state = r["state"]
    if state in PIPELINE:
        shown = " → ".join(f"[{s}]" if s == state else s for s in PIPELINE)
    else:  # failed, or a state this client does not know
        shown = f"[{state}]"
    attempts = r.get("attempts") or 0
    retry = f", attempt {attempts}" if attempts > 1 and state not in TERMINAL else ""
    return f"{r['id']}: {shown}  {_clock(elapsed)}{retry}"


def _status_line(text: str) -> None:
    """Rewrite the terminal's current line on stderr with ``text`` (cut to the width, so
    that it never wraps); an empty ``text`` erases it."""
    width = max(1, shutil.get_terminal_size().columns - 1)
    sys.stderr.write("\r" + text[:width] + "\x1b[K")
    sys.stderr.flush()


def _wait(client: Client, r: dict, timeout: float, show: bool) -> dict:
    """Poll the request until it is published or failed, or ``timeout`` runs out. ``show``:
    a status line on stderr (``wait_line``), rewritten each poll and erased at the end."""
    start = time.monotonic()
    try:
        while r["state"] not in TERMINAL and time.monotonic() < start + timeout:
            if show:
                _status_line(wait_line(r, time.monotonic() - start))
            time.sleep(0.5)
            r = {**r, **client.call("GET", f"/v1/deletions/{r['id']}")}
    finally:
        if show:
            _status_line("")
    return r


@click.group(cls=Group)
@click.version_option(__version__, prog_name="eraserctl")
def main() -> None:
    """Talk to a running eraserd daemon: submit deletions, check status, predict."""


@main.command("submit-deletion")
@click.option("--sample-id", "sample_ids", multiple=True, help="Sample id (repeatable).")
@click.option("--subject-id", "subject_ids", multiple=True, help="Subject id (repeatable).")
@click.option(
    "--from-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="One id per line: ID, sample:ID or subject:ID; # comments.",
)
@click.option("--idempotency-key", help="Resubmitting with this key returns the same request.")
@click.option("--deadline", help="Duration (72h, 30m) or ISO 8601 time; default from config.")
@click.option(
    "--wait",
    is_flag=True,
    help="Wait until the request is published or failed (on a terminal, with its state).",
)
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to --wait.")
@_client_options
def submit_deletion(
    client: Client,
    as_json: bool,
    sample_ids,
    subject_ids,
    from_file,
    idempotency_key,
    deadline,
    wait: bool,
    timeout: float,
) -> None:
    """Queue a deletion request (acknowledged once it is durable)."""
    more_s, more_subj = read_ids(from_file)
    body: dict[str, Any] = {
        "sample_ids": list(sample_ids) + more_s,
        "subject_ids": list(subject_ids) + more_subj,
    }
    if not body["sample_ids"] and not body["subject_ids"]:
        raise InvalidInputError("name at least one --sample-id, --subject-id or --from-file")
    if idempotency_key:
        body["idempotency_key"] = idempotency_key
    if deadline:
        body["deadline"] = parse_deadline(deadline, time.time())
    r = client.call("POST", "/v1/deletions", body)
    if wait:
        r = _wait(client, r, timeout, show=not as_json and sys.stderr.isatty())
    now = time.time()
    notes = (
        [f"already forgotten: {', '.join(r['already_forgotten_ids'])}"]
        if r.get("already_forgotten_ids")
        else []
    )
    if r.get("already_pending_ids"):
        notes.append(f"already pending: {', '.join(r['already_pending_ids'])}")
    error: EraserdError | None = None
    if wait and r["state"] not in TERMINAL:
        error = WaitTimeoutError(
            f"gave up waiting after {timeout:g}s: request {r['id']} is still "
            f"{r['state']} (the daemon keeps it; see eraserctl status {r['id']})"
        )
    elif wait and r["state"] != "published":
        error = RequestFailedError(
            f"request {r['id']} failed: {r.get('reason') or 'no reason given'} "
            f"(see eraserctl status {r['id']})"
        )
    if not (as_json and error):  # with --json, the request comes with the error
        click.echo(json.dumps(r, indent=2) if as_json else "\n".join([_describe(r, now), *notes]))
    if error:
        fail(error, as_json, r)


@main.command()
@click.argument("request_id", required=False)
@_client_options
def status(client: Client, as_json: bool, request_id: str | None) -> None:
    """Daemon summary, or one request's state."""
    now = time.time()
    if request_id:
        r = client.call("GET", f"/v1/deletions/{request_id}")
        click.echo(json.dumps(r, indent=2) if as_json else _describe(r, now))
        return
    s = client.call("GET", "/v1/status")
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    q = s["queue"]
    states = ", ".join(f"{k} {v}" for k, v in q["requests"].items() if v)
    last = s.get("last_batch")
    lines = [
        f"version {s['version']} ({s['clusters']} clusters), up {s['uptime_s']:.0f}s",
        f"queue: {states or 'empty'}; {q['queued_samples']} sample(s) waiting"
        + (f", oldest {q['oldest_queued_age_s']:.0f}s" if q["oldest_queued_age_s"] else ""),
        f"window {s['window_s']:.0f}s, next in {max(0.0, s['next_window_at'] - now):.0f}s; "
        f"predicted batch time {s['predicted_batch_s']:.1f}s",
    ]
    if last:
        lines.append(
            f"last batch {last['id']}: {last['state']}"
            + (f" -> version {last['version']}" if last["version"] else "")
            + (
                f", {last['retrained']} cluster(s) retrained in {last['seconds']:.1f}s"
                if last["seconds"] is not None
                else ""
            )
        )
    for r in s.get("retries") or []:
        lines.append(
            f"batch {r['batch']}: retrying after {r['attempts']} attempt(s)"
            + (f" (last error: {r['error']})" if r["error"] else "")
            + f", next attempt in {r['next_attempt_in_s']:.0f}s"
        )
    click.echo("\n".join(lines))


@main.command("list")
@click.option(
    "--state",
    type=click.Choice([s.value for s in RequestState]),
    help="Only requests in this state.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Requests per page (the daemon allows up to 500).",
)
@click.option("--all", "follow", is_flag=True, help="Follow the pages to the last request.")
@_client_options
def list_requests(
    client: Client, as_json: bool, state: str | None, limit: int, follow: bool
) -> None:
    """Deletion requests, newest first: one line each (one page unless --all)."""
    found, more = client.deletions(state, limit, follow)
    if as_json:
        click.echo(json.dumps(found, indent=2))
    else:
        now = time.time()
        lines = [_list_line(r, now) for r in found]
        click.echo("\n".join(lines) if lines else f"no {state + ' ' if state else ''}requests")
    if more:
        click.echo(f"eraserctl: more than {limit} request(s): pass --all for every page", err=True)


@main.command()
@click.argument("request_id")
@_client_options
def certificate(client: Client, as_json: bool, request_id: str) -> None:
    """The deletion certificate of a published request (from the audit log)."""
    e = client.call("GET", f"/v1/deletions/{request_id}/certificate")
    if as_json:
        click.echo(json.dumps(e, indent=2))
        return
    c = e["certificate"]
    parent = (
        f" (replacing version {c['parent_version']}, manifest {c['parent_manifest']})"
        if c.get("parent_version") is not None
        else ""
    )
    click.echo(
        "\n".join(
            [
                f"request {c['request']}: deleted; certificate {e['seq']} of the audit log "
                f"(hash {e['hash']})",
                f"batch {c['batch']} -> version {c['version']}, manifest {c['manifest']}{parent}",
                f"{len(c['samples'])} sample(s) and {len(c['subjects'])} subject(s), "
                "named by keyed hash",
                "affected clusters: " + (", ".join(c["affected_clusters"]) or "none"),
                f"{len(c['purged_blobs'])} superseded blob(s) purged",
                f"submitted {c['submitted_at']}, published {c['published_at']}",
            ]
        )
    )


@main.command()
@_client_options
def flush(client: Client, as_json: bool) -> None:
    """Start a batch now instead of waiting for the window."""
    r = client.call("POST", "/v1/flush")
    click.echo(
        json.dumps(r)
        if as_json
        else (f"flushing {r['queued_requests']} request(s)" if r["flushing"] else "nothing queued")
    )


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@_client_options
def predict(client: Client, as_json: bool, images) -> None:
    """Classify images with the version the daemon is serving."""
    out = []
    for path in images:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise EraserdError(f"{path}: cannot read: {exc.strerror}") from None
        r = client.call("POST", "/v1/predict", data=data, content_type="application/octet-stream")
        out.append({"image": str(path), **r})
    click.echo(
        json.dumps(out, indent=2)
        if as_json
        else "\n".join(
            f"{o['image']}\t{o['label']}\tcluster {o['cluster']}\tversion {o['version']}\t"
            f"p={o['probability']:.3f}"
            for o in out
        )
    )
