"""Webhook: an HTTP POST of the alert as JSON (httpx).

format = "json"   the alert payload as is (see docs/monitor.md)
format = "slack"  a Slack incoming-webhook message ({"text": ..., "blocks": [...]})
format = "teams"  a Microsoft Teams message with an Adaptive Card (Workflows / connectors)

Every request carries an `Idempotency-Key` header (the alert id) so a receiver can drop a
repeat delivery. 2xx is success; 408, 429 and 5xx are retried; other 4xx mean the receiver
rejected the message itself, and it is kept as dead rather than retried forever.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import httpx

from sockgate.errors import ChannelError, PermanentChannelError
from sockgate.monitor.channels import TLS, Channel, _choice, _strtable, summary_lines
from sockgate.record import oneline

_SEV_COLOR = {"emergency": "8B0000", "alert": "B22222", "critical": "D00000", "error": "E8590C",
              "warning": "F2C744", "notice": "2F7BD9", "info": "2EB67D", "debug": "999999"}


def check_url(v: Any) -> str | None:
    if not isinstance(v, str):
        return "expected an http:// or https:// URL"
    try:
        u = urlsplit(v)
        u.port  # noqa: B018
    except ValueError as e:
        return f"bad URL {v!r}: {e}"
    if u.scheme not in ("http", "https") or not u.hostname:
        return f"bad URL {v!r} (expected http:// or https://)"
    return None


def slack_text(s: str) -> str:
    """Slack reads &, < and > as control characters (<!channel>, <@U..>, <url|text>): as
    entities the text is shown, never acted on (Slack's own escaping rule)."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_MARKDOWN = re.compile(r"([\\`*_~\[\]()<>#!])")


def teams_text(s: str) -> str:
    """Adaptive Card text is markdown: [text](url) would be a live link, **x** emphasis.
    Backslash escapes (CommonMark) show the characters as they are."""
    return _MARKDOWN.sub(r"\\\1", s)


def _title(alert: dict[str, Any]) -> str:
    note = f" (storm: {alert['count']} folded)" if alert.get("storm") else \
        f" (repeated {alert['count']}x)" if alert.get("repeat") else ""
    return f"[{alert['severity'].upper()}] {alert['alert']}{note}"


def slack_payload(alert: dict[str, Any]) -> dict[str, Any]:
    title, message = slack_text(_title(alert)), slack_text(alert["message"])
    fields = [{"type": "mrkdwn", "text": f"*{slack_text(k)}*\n{slack_text(v)}"} for k, v in summary_lines(alert)[:10]]
    return {
        "text": f"{title}: {message}",   # the notification / fallback text
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": message[:3000]}},
            {"type": "section", "fields": fields},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"id `{slack_text(alert['id'])}`"}]},
        ],
    }


def teams_payload(alert: dict[str, Any]) -> dict[str, Any]:
    title = _title(alert)
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": teams_text(title), "weight": "Bolder", "size": "Medium", "wrap": True,
             "color": "Attention" if alert["severity"] in ("emergency", "alert", "critical", "error") else "Warning"},
            {"type": "TextBlock", "text": teams_text(alert["message"]), "wrap": True},
            {"type": "FactSet", "facts": [{"title": teams_text(k), "value": teams_text(v)}
                                          for k, v in summary_lines(alert)]},
        ],
    }
    return {"type": "message", "summary": title,
            "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]}


def webhook_body(fmt: str, alert: dict[str, Any]) -> dict[str, Any]:
    if fmt == "slack":
        return slack_payload(alert)
    if fmt == "teams":
        return teams_payload(alert)
    return alert


class WebhookChannel(Channel):
    type = "webhook"
    OPTIONS = {"url": check_url, "format": _choice("json", "slack", "teams"), "headers": _strtable, **TLS}
    REQUIRED = frozenset({"url"})

    def __init__(self, name: str, opts: dict[str, Any]):
        super().__init__(name, opts)
        self.url = opts["url"]
        self.format = opts.get("format", "json")
        verify: Any = True
        if self.url.startswith("https:"):
            verify = self.ssl_context()
        self.client = httpx.Client(timeout=self.timeout, verify=verify, follow_redirects=False,
                                   headers={"User-Agent": "sockgate-monitor", **opts.get("headers", {})})

    def peer(self) -> tuple[str, int, str]:
        u = urlsplit(self.url)
        return u.hostname or "", u.port or (443 if u.scheme == "https" else 80), "tcp"

    def send(self, alert: dict[str, Any]) -> None:
        try:
            r = self.client.post(self.url, json=webhook_body(self.format, alert),
                                 headers={"Idempotency-Key": alert["id"]})
        except httpx.HTTPError as e:
            raise ChannelError(f"webhook {self.url}: {type(e).__name__}: {e}") from None
        if 200 <= r.status_code < 300:
            return
        text = oneline(r.text[:200])
        if r.status_code in (408, 429) or r.status_code >= 500 or r.status_code < 200 or 300 <= r.status_code < 400:
            raise ChannelError(f"webhook {self.url}: HTTP {r.status_code} {text}")
        raise PermanentChannelError(f"webhook {self.url}: HTTP {r.status_code} {text}")

    def close(self) -> None:
        self.client.close()


CHANNEL = WebhookChannel
