"""The `email` action: one message through the configured SMTP server per attempt (DESIGN §3).

The server comes from settings (`AML_WORKER_SMTP_*`): STARTTLS by default, implicit TLS
(`tls`) or none, with a login when a username is set. The Message-ID is derived from the
idempotency key, so a message sent again after a crash or a retry carries the same id and
mail systems that dedupe by it show it once.

Outcome: a connection failure, a timeout or a 4xx reply is retryable; a 5xx reply (550
recipient refused, 535 authentication failed) and a configuration problem (no sender, no
server, STARTTLS or AUTH not offered, a TLS certificate not trusted) are not. A message
accepted for some recipients and refused for others counts as sent (sending it again would
repeat it for the others); the refusals are logged and returned.
"""

from __future__ import annotations

import re
import ssl
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import aiosmtplib
import structlog

from worker.errors import ActionError
from worker.events import iso_ticks
from worker.jsontext import utf8_safe
from worker.plan import PlannedAction
from worker.rules import parse_mailbox
from worker.templates import Redactor, mask

__all__ = ["DEFAULT_PORTS", "EmailExecutor", "build_message", "message_id"]

log = structlog.get_logger("worker.actions")

DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
DEFAULT_TIMEOUT_S = 30.0
_SHOWN_REPLY_CHARS = 200
_SHOWN_ENTRY_CHARS = 120


MAX_SUBJECT_CHARS = 998


def message_id(key: str) -> str:
    return f"<{key}@aml-event-worker>"


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _one_line(text: str) -> str:
    """Header values never carry line breaks or other control characters (a rendered
    subject might): each becomes a space, and runs of whitespace one space."""
    return " ".join(_CONTROL_RE.sub(" ", str(text)).split())


def _mailbox(entry: Any, field: str, redact: Redactor | None) -> Address:
    """Exactly one address, or a permanent failure naming the parameter."""
    address = parse_mailbox(utf8_safe(str(entry)))
    if address is None:
        shown = (redact or Redactor({}, {})).excerpt(utf8_safe(str(entry)), _SHOWN_ENTRY_CHARS)
        raise ActionError(
            f"email: '{field}' entry {shown!r} is not exactly one email address "
            "(write one address per list entry: no commas, semicolons, line breaks or quotes)",
            retryable=False,
        )
    return address


def _addresses(entries: Any, field: str, redact: Redactor | None = None) -> list[Address]:
    """`to`/`cc` entries: a list (or one string), each entry exactly one address; blank
    entries (an optional recipient rendered empty) are skipped."""
    if entries is None:
        return []
    if isinstance(entries, str):
        entries = [entries]
    return [_mailbox(entry, field, redact) for entry in entries if str(entry).strip()]


def _summary(planned: PlannedAction) -> str:
    event = planned.event
    return (
        f"Azure ML event {event.type}\n"
        f"\n"
        f"subject: {event.subject}\n"
        f"id:      {event.id}\n"
        f"time:    {iso_ticks(event.time_ticks)}\n"
        f"topic:   {event.topic}\n"
        f"rule:    {planned.rule}\n"
    )


def build_message(
    planned: PlannedAction, params: Any, sender: str, redact: Redactor | None = None
) -> tuple[EmailMessage, str, list[str]]:
    """The message, the envelope sender and the envelope recipients (To + Cc, no repeats).

    Each `to`/`cc`/`from` entry must be exactly one address (else a permanent ActionError
    naming the parameter; `redact` hides secrets in it), and the subject is one line
    without control characters: no event data adds a recipient or a header (DESIGN §7).
    """
    senders = _addresses([sender], "from", redact)
    if len(senders) != 1:
        raise ActionError(f"email: 'from' must be one address, not {len(senders)}", retryable=False)
    to = _addresses(params.get("to"), "to", redact)
    cc = _addresses(params.get("cc"), "cc", redact)
    if not to and not cc:
        raise ActionError("email: 'to' names no recipient after rendering", retryable=False)
    message = EmailMessage()
    message["From"] = senders[0]
    if to:
        message["To"] = to
    if cc:
        message["Cc"] = cc
    subject = params.get("subject") or f"Azure ML event {planned.event.type}"
    # RFC 5322's line limit: a longer subject (event data, say) costs the event loop
    # seconds of header folding and no reader would see it anyway.
    message["Subject"] = utf8_safe(_one_line(subject))[:MAX_SUBJECT_CHARS]
    message["Date"] = format_datetime(datetime.now(UTC), usegmt=True)
    message["Message-ID"] = message_id(planned.key)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
    body = params.get("body")
    message.set_content(utf8_safe(_summary(planned) if body is None else str(body)))
    html = params.get("html")
    if html:
        message.add_alternative(utf8_safe(str(html)), subtype="html")
    recipients = list(dict.fromkeys(a.addr_spec for a in (*to, *cc)))
    return message, senders[0].addr_spec, recipients


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return getter() if callable(getter) else str(value)


def _is_cert_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reply(exc: aiosmtplib.SMTPResponseException, redact: Redactor) -> str:
    text = redact.excerpt(exc.message, _SHOWN_REPLY_CHARS)
    return f"{exc.code} {text}".strip()


class EmailExecutor:
    """Sends each message over its own SMTP connection (nothing to keep between attempts)."""

    def __init__(self, settings: Any) -> None:
        self._settings = settings

    async def __aenter__(self) -> EmailExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        pass

    def _setting(self, name: str, default: Any = None) -> Any:
        value = getattr(self._settings, name, None)
        return default if value is None else value

    async def execute(self, planned: PlannedAction, params: Any) -> dict[str, Any] | None:
        password = _secret(self._setting("smtp_password"))
        redact = Redactor(mask(planned.params), params, extra=[password] if password else ())
        sender = params.get("from") or self._setting("smtp_from")
        if not sender:
            raise ActionError(
                "email: no sender; set 'from' on the action or AML_WORKER_SMTP_FROM",
                retryable=False,
            )
        host = self._setting("smtp_host")
        if not host:
            raise ActionError(
                "email: no SMTP server configured; set AML_WORKER_SMTP_HOST", retryable=False
            )
        mode = str(self._setting("smtp_tls", "starttls")).lower()
        if mode not in DEFAULT_PORTS:
            raise ActionError(
                f"email: AML_WORKER_SMTP_TLS must be starttls, tls or none, not {mode!r}",
                retryable=False,
            )
        port = int(self._setting("smtp_port", DEFAULT_PORTS[mode]))
        timeout_s = float(self._setting("smtp_timeout", DEFAULT_TIMEOUT_S))
        username = self._setting("smtp_username")
        server = f"{host}:{port}"

        try:
            message, envelope_from, recipients = build_message(planned, params, sender, redact)
        except ValueError as exc:  # a header the email package refuses
            raise ActionError(
                f"email: the message could not be built: {redact(str(exc))}", retryable=False
            ) from None

        try:
            refused, _ = await aiosmtplib.send(
                message,
                sender=envelope_from,
                recipients=recipients,
                hostname=host,
                port=port,
                username=username or None,
                password=(password or "") if username else None,
                use_tls=mode == "tls",
                start_tls=mode == "starttls",
                timeout=timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            detail = "; ".join(
                f"{redact(r.recipient)}: {_reply(r, redact)}" for r in exc.recipients
            )
            raise ActionError(
                f"email via {server}: every recipient was refused ({detail})",
                retryable=any(400 <= code < 500 for code in codes),
            ) from None
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise ActionError(
                f"email via {server}: login as {username!r} failed: {_reply(exc, redact)}",
                retryable=400 <= exc.code < 500,
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise ActionError(
                f"email via {server}: the server answered {_reply(exc, redact)}",
                retryable=not 500 <= exc.code < 600,
            ) from None
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected) as exc:
            if _is_cert_error(exc):
                raise ActionError(
                    f"email via {server}: the server's TLS certificate was not accepted "
                    f"({redact(str(exc))})",
                    retryable=False,
                ) from None
            raise ActionError(
                f"email via {server}: connection failed: {redact(str(exc))}", retryable=True
            ) from None
        except (aiosmtplib.SMTPTimeoutError, TimeoutError):
            raise ActionError(
                f"email via {server}: timed out after {timeout_s:g}s", retryable=True
            ) from None
        except aiosmtplib.SMTPException as exc:  # STARTTLS/AUTH/SMTPUTF8 not offered
            raise ActionError(
                f"email via {server}: {redact(str(exc))} (check AML_WORKER_SMTP_TLS, "
                "AML_WORKER_SMTP_PORT and the server's settings)",
                retryable=False,
            ) from None
        except ssl.SSLError as exc:
            raise ActionError(
                f"email via {server}: TLS failed: {redact(str(exc))}",
                retryable=not _is_cert_error(exc),
            ) from None
        except OSError as exc:
            raise ActionError(
                f"email via {server}: connection failed: {redact(str(exc))}", retryable=True
            ) from None

        facts: dict[str, Any] = {
            "server": server,
            "message_id": message["Message-ID"],
            "recipients": len(recipients),
        }
        if refused:
            facts["refused"] = {
                redact(addr): f"{reply.code} {_one_line(redact(reply.message))}"
                for addr, reply in refused.items()
            }
            log.warning(
                "email_recipients_refused",
                rule=planned.rule,
                idempotency_key=planned.key,
                event_id=planned.event.id,
                refused=facts["refused"],
            )
        return facts
