"""SMTP email (smtplib): plain, STARTTLS or implicit TLS, optional AUTH.

One message per alert. The Message-ID is derived from the alert id, so a message sent
twice (the server accepted it but the monitor died before recording that) can be
recognised as the same message by the receiving side.
"""

from __future__ import annotations

import ipaddress
import os
import smtplib
import socket
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from sockgate.errors import ChannelError, PermanentChannelError
from sockgate.monitor.channels import TLS, Channel, _bool, _choice, _port, _str, _strlist, summary_lines
from sockgate.monitor.render import SUBJECT_FIELDS, Template, group_text
from sockgate.record import Entry, oneline

DEFAULT_SUBJECT = "[sockgate] {severity}: {alert} on {host}"


def _loopback(host: Any) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _subject(template: str, alert: dict[str, Any]) -> str:
    """The subject: the template engine of alert messages, over the delivered alert (the
    fields of its entry and {alert} {severity} {kind} {count} {group} {message}; {host} is
    the entry's host, else the monitor's)."""
    e = alert.get("entry") or None
    values = {"alert": alert["alert"], "severity": alert["severity"], "kind": alert["kind"],
              "count": alert["count"], "group": group_text(alert.get("group") or {}),
              "host": (e or {}).get("host") or alert.get("monitor_host") or "-", "message": alert["message"]}
    text = Template(template, SUBJECT_FIELDS, "subject").render(Entry.from_dict(e) if e else None, values)
    return oneline(text)[:200]   # a header is one line: no CR, LF, VT, U+2028 ... may stay


def build_message(alert: dict[str, Any], sender: str, to: list[str], subject: str = DEFAULT_SUBJECT) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    subj = _subject(subject, alert)
    if alert.get("storm"):
        subj = f"{subj} (storm: {alert['count']} folded)"
    elif alert.get("repeat"):
        subj = f"{subj} (repeated {alert['count']}x)"
    msg["Subject"] = subj
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<{alert['id'].replace('/', '.').replace(':', '.')}@sockgate>"
    msg["X-Sockgate-Alert-Id"] = alert["id"]
    msg["X-Sockgate-Severity"] = alert["severity"]
    width = max(len(k) for k, _ in summary_lines(alert))
    body = oneline(alert["message"]) + "\n\n" + "\n".join(f"{k.ljust(width)}  {v}" for k, v in summary_lines(alert)) + "\n"
    # A checkpoint's JSON line stays one line in the raw message too (not quoted-printable
    # soft breaks), so it can be saved from any mail client as the FILE of verify --checkpoint.
    raw = "checkpoint" in alert and body.isascii() and max(map(len, body.splitlines())) <= 998
    msg.set_content(body, cte="7bit" if raw else None)
    return msg


class EmailChannel(Channel):
    type = "email"
    OPTIONS = {"host": _str, "port": _port, "tls": _choice("starttls", "ssl", "none"), "from": _str,
               "to": _strlist, "username": _str, "password_file": _str, "password_env": _str,
               "subject": _str, "plaintext_auth": _bool, **TLS}
    REQUIRED = frozenset({"host", "from", "to"})

    @classmethod
    def check(cls, opts: dict[str, Any]) -> list[tuple[str | None, str]]:
        out: list[tuple[str | None, str]] = []
        if isinstance(opts.get("subject"), str):
            out += [("subject", f"subject: {e}") for e in Template(opts["subject"], SUBJECT_FIELDS, "subject").errors]
        if ("password_file" in opts or "password_env" in opts) and "username" not in opts:
            out.append((None, "a password is set but no username"))
        if opts.get("tls") == "none" and "username" in opts:
            if opts.get("plaintext_auth") is not True:
                out.append(("tls", "tls = \"none\" with a username would send AUTH (the password) in plaintext; "
                                   "use tls = \"starttls\" or \"ssl\" (plaintext_auth = true allows it to a loopback "
                                   "relay only)"))
            elif not _loopback(opts.get("host")):
                out.append(("plaintext_auth", f"plaintext_auth: only for a loopback host (127.0.0.1, ::1, "
                                              f"localhost), not {opts.get('host')!r}"))
        elif "plaintext_auth" in opts and opts.get("tls", "starttls") != "none":
            out.append(("plaintext_auth", "plaintext_auth applies to tls = \"none\" only"))
        return out

    def __init__(self, name: str, opts: dict[str, Any]):
        super().__init__(name, opts)
        self.tls = opts.get("tls", "starttls")
        self.host = opts["host"]
        self.port = opts.get("port", {"ssl": 465, "starttls": 587, "none": 25}[self.tls])

    def _password(self) -> str | None:
        if "password_file" in self.opts:
            try:
                with open(self.opts["password_file"], encoding="utf-8") as f:
                    return f.read().strip()
            except OSError as e:
                raise ChannelError(f"email: password_file {self.opts['password_file']}: {e.strerror}") from None
        if "password_env" in self.opts:
            pw = os.environ.get(self.opts["password_env"])
            if pw is None:
                raise ChannelError(f"email: environment variable {self.opts['password_env']} is not set")
            return pw
        return None

    def peer(self) -> tuple[str, int, str]:
        return self.host, self.port, "tcp"

    def send(self, alert: dict[str, Any]) -> None:
        msg = build_message(alert, self.opts["from"], self.opts["to"], self.opts.get("subject", DEFAULT_SUBJECT))
        where = f"email smtp://{self.host}:{self.port}"
        try:
            if self.tls == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                                      context=self.ssl_context())
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with smtp:
                smtp.ehlo()
                if self.tls == "starttls":
                    smtp.starttls(context=self.ssl_context())
                    smtp.ehlo()
                if self.opts.get("username"):
                    if self.tls == "none" and not (self.opts.get("plaintext_auth") and _loopback(self.host)):
                        # --check refuses this too; never hand a password to an unencrypted socket
                        raise ChannelError(f"{where}: refusing to send AUTH over a plaintext connection")
                    smtp.login(self.opts["username"], self._password() or "")
                refused = smtp.send_message(msg)
                if refused:
                    raise PermanentChannelError(f"{where}: recipients refused: {', '.join(refused)}")
        except smtplib.SMTPAuthenticationError as e:
            raise ChannelError(f"{where}: authentication failed ({e.smtp_code})") from None
        except smtplib.SMTPRecipientsRefused as e:
            raise PermanentChannelError(f"{where}: recipients refused: {', '.join(e.recipients)}") from None
        except smtplib.SMTPResponseException as e:
            err = PermanentChannelError if 500 <= e.smtp_code < 600 and e.smtp_code not in (530, 535) else ChannelError
            raise err(f"{where}: {e.smtp_code} {e.smtp_error!r}") from None
        except (smtplib.SMTPException, OSError, socket.timeout) as e:
            raise ChannelError(f"{where}: {e}") from None


CHANNEL = EmailChannel
