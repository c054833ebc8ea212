"""`replay`: a readable timeline of what was done, request by request.

    2026-11-29T09:14:03.120Z  sam as acme/bob  grant g-42  GET /invoices  200  12.4 ms  2.1 kB
    2026-11-29T09:14:09.877Z  sam as acme/bob  grant g-42  POST /users  403 DENIED no_grant: …
    2026-11-29T09:15:00.000Z  workflow grant.revoked  by alice (acme)  grant g-42

`format_line(body)` renders one merged request or event; `format_bodies(body)` the
captured (already redacted) bodies beneath it. Both show record text with its control
and format characters escaped (`audit.reader.printable`): it is shown, never obeyed.
"""

from __future__ import annotations

from typing import Any

from audit.reader import REQUEST_KINDS, get, printable


def _size(n: Any) -> str:
    if not isinstance(n, int):
        return "-"
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} kB"
    return f"{n / 1024 / 1024:.1f} MB"


def _who(body: dict[str, Any]) -> str:
    actor = get(body, "user.id") or "?"
    member = get(body, "user.effective.id")
    if member:
        org = get(body, "user.effective.domain") or get(body, "organization.id") or "?"
        return f"{actor} as {org}/{member}"
    org = get(body, "user.domain")
    return f"{actor} ({org})" if org else str(actor)


def format_line(body: dict[str, Any]) -> str:
    stamp = get(body, "event.start") or body.get("@timestamp") or "?"
    grant = get(body, "gateway.grant.id")
    grant_part = f"  grant {grant}" if grant else ""
    if body.get("record") in REQUEST_KINDS:
        path = str(get(body, "url.path") or "/")
        query = get(body, "url.query")
        target = f"{get(body, 'http.request.method') or '?'} {path}" + (
            f"?{query}" if query else ""
        )
        if get(body, "error.code"):
            outcome = f"DENIED {get(body, 'error.code')}: {get(body, 'error.message') or ''}"
            status = get(body, "http.response.status_code")
            if isinstance(status, int):
                outcome = f"{status} {outcome}"
        else:
            status = get(body, "http.response.status_code")
            total = get(body, "gateway.timings.total")
            duration = get(body, "event.duration")
            ms = (
                total
                if isinstance(total, int | float)
                else (duration / 1e6 if isinstance(duration, int) else None)
            )
            outcome = "  ".join(
                (
                    str(status) if status is not None else "(no response)",
                    f"{ms:.1f} ms" if ms is not None else "- ms",
                    _size(get(body, "http.response.bytes")),
                )
            )
        return printable(f"{stamp}  {_who(body)}{grant_part}  {target}  {outcome}".rstrip())
    action = get(body, "event.action") or "?"
    outcome = get(body, "event.outcome")
    reason = get(body, "event.reason")
    tail = f"  {outcome}" if outcome and outcome != "success" else ""
    tail += f": {reason}" if reason else ""
    return printable(f"{stamp}  {body.get('record')} {action}  by {_who(body)}{grant_part}{tail}")


def format_bodies(body: dict[str, Any]) -> list[str]:
    lines = []
    for side in ("request", "response"):
        captured = get(body, f"http.{side}.body")
        if isinstance(captured, dict) and isinstance(captured.get("content"), str):
            mime = captured.get("mime_type") or "?"
            note = " (truncated)" if captured.get("truncated") else ""
            header = f"    {side} body [{mime}, {_size(captured.get('bytes'))}]{note}:"
            lines.append(printable(header))
            content = captured["content"].splitlines()[:200]
            lines.extend("      " + printable(line) for line in content)
    return lines
