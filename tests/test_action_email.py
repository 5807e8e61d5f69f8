"""The email action against a real aiosmtpd server on loopback (no mocks of our code)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email
import email.policy
import ipaddress
import json
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import hypothesis
import pytest
import structlog.testing
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from hypothesis import HealthCheck
from hypothesis import strategies as st

from tests.conftest import TOPIC, eg, free_port
from tests.hostile import hostile_text
from worker.actions.email import EmailExecutor
from worker.errors import ActionError
from worker.events import decode_body
from worker.plan import PlannedAction, plan_rule
from worker.rules import parse_rules
from worker.templates import reveal

DATA = {"runId": "run-42", "runStatus": "Failed"}


def planned_for(
    action: dict[str, Any],
    event: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[PlannedAction, Any]:
    """Plan one action exactly as the worker does: rules text, decoded event, plan, reveal."""
    environ = environ or {}
    rules = {"version": 1, "topics": [TOPIC], "rules": [{"name": "mail", "actions": [action]}]}
    ruleset = parse_rules(json.dumps(rules), "rules.yaml", environ=environ)
    events, rejections = decode_body(json.dumps(event or eg(data=DATA)).encode())
    assert not rejections and len(events) == 1
    [planned] = plan_rule(ruleset.rules[0], events[0])
    assert isinstance(planned, PlannedAction), planned
    return planned, reveal(planned.params, environ)


def mail(**params: Any) -> dict[str, Any]:
    return {"type": "email", "to": ["ops@example.com"], "subject": "Run failed", **params}


def smtp_settings(port: int, **overrides: Any) -> SimpleNamespace:
    """Stand-in for the coming `Settings.smtp_*` fields."""
    values = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_username": None,
        "smtp_password": None,
        "smtp_from": "AML Worker <worker@example.com>",
        "smtp_tls": "none",
        "smtp_timeout": 5.0,
    }
    return SimpleNamespace(**{**values, **overrides})


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    content: bytes = b""  # as sent


class Mailbox:
    """An aiosmtpd handler that records what it accepts and answers as told."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.data_reply = "250 Message accepted for delivery"
        self.refuse: dict[str, str] = {}  # recipient -> RCPT reply
        self.logins: list[tuple[str, str]] = []  # (mechanism, login)
        self.credentials = (b"mailer", b"pa55-w0rd-x")  # what AUTH accepts

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply.startswith("250"):
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), message, envelope.content)
            )
        return self.data_reply

    def authenticator(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((mechanism, auth_data.login.decode()))
        ok = (auth_data.login, auth_data.password) == self.credentials
        return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtpd() -> Iterator[Callable[..., tuple[Mailbox, int]]]:
    """Start aiosmtpd controllers on free ports (port=0 breaks Controller.start)."""
    started: list[Controller] = []

    def start(**kwargs: Any) -> tuple[Mailbox, int]:
        mailbox = Mailbox()
        if kwargs.pop("auth", False):
            kwargs.update(authenticator=mailbox.authenticator, auth_require_tls=False)
        port = free_port()
        controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        return mailbox, port

    yield start
    for controller in started:
        controller.stop()


async def send(settings: Any, planned: PlannedAction, params: Any) -> dict[str, Any] | None:
    async with EmailExecutor(settings) as executor:
        return await executor.execute(planned, params)


async def failure(settings: Any, planned: PlannedAction, params: Any) -> ActionError:
    with pytest.raises(ActionError) as caught:
        await send(settings, planned, params)
    return caught.value


# --- the message --------------------------------------------------------------------------


async def test_message_headers_parts_and_envelope(smtpd):
    """From/To/Cc/Subject/Message-ID, plain + HTML parts, and every address on the envelope."""
    mailbox, port = smtpd()
    action = mail(
        to=["ops@example.com", "Team Lead <lead@example.com>, oncall@example.com"],
        cc=["audit@example.com"],
        subject="Run {{ data.runId }} is {{ data.runStatus }}",
        body="Run {{ data.runId }} failed.\nSee the studio.",
        html="<p>Run <b>{{ data.runId }}</b> failed.</p>",
    )
    planned, params = planned_for(action)

    facts = await send(smtp_settings(port), planned, params)

    [got] = mailbox.received
    message = got.message
    assert message["From"] == "AML Worker <worker@example.com>"
    assert message["To"] == "ops@example.com, Team Lead <lead@example.com>, oncall@example.com"
    assert message["Cc"] == "audit@example.com"
    assert message["Subject"] == "Run run-42 is Failed"
    assert message["Message-ID"] == f"<{planned.key}@aml-event-worker>"
    assert message["Date"].datetime.tzinfo is not None
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",)).get_content()
    assert plain.replace("\r\n", "\n") == "Run run-42 failed.\nSee the studio.\n"
    html = message.get_body(("html",)).get_content()
    assert html.strip() == "<p>Run <b>run-42</b> failed.</p>"
    assert got.mail_from == "worker@example.com"
    assert got.rcpt_tos == [
        "ops@example.com",
        "lead@example.com",
        "oncall@example.com",
        "audit@example.com",
    ]
    assert facts == {
        "server": f"127.0.0.1:{port}",
        "message_id": f"<{planned.key}@aml-event-worker>",
        "recipients": 4,
    }


async def test_default_body_summarises_the_event_and_from_param_wins(smtpd):
    """No body: a plain-text summary of the event; `from` overrides AML_WORKER_SMTP_FROM."""
    mailbox, port = smtpd()
    event = eg("evt-9", subject="experiments/e/runs/r9", time="2024-06-10T10:00:00.1234567Z")
    planned, params = planned_for(mail(**{"from": "alerts@example.org"}), event)

    await send(smtp_settings(port), planned, params)

    [got] = mailbox.received
    assert got.message["From"] == "alerts@example.org"
    assert got.mail_from == "alerts@example.org"
    assert got.message.get_content_type() == "text/plain"
    text = got.message.get_content()
    for fact in (
        "Microsoft.MachineLearningServices.RunStatusChanged",
        "experiments/e/runs/r9",
        "evt-9",
        "2024-06-10T10:00:00.1234567Z",
        TOPIC,
        "mail",
    ):
        assert fact in text


async def test_the_same_action_sends_the_same_message_id(smtpd):
    """A retry or replay carries the same Message-ID, so mail systems can dedupe it."""
    mailbox, port = smtpd()
    planned, params = planned_for(mail())
    other, other_params = planned_for(mail(), eg("another-event", data=DATA))

    for p, pp in ((planned, params), (planned, params), (other, other_params)):
        await send(smtp_settings(port), p, pp)

    ids = [got.message["Message-ID"] for got in mailbox.received]
    assert ids[0] == ids[1] != ids[2]


# --- configuration ------------------------------------------------------------------------


async def test_missing_from_is_not_retryable_and_says_what_to_set(smtpd):
    """Neither `from` nor AML_WORKER_SMTP_FROM: a configuration error, nothing sent."""
    mailbox, port = smtpd()
    planned, params = planned_for(mail())

    error = await failure(smtp_settings(port, smtp_from=None), planned, params)

    assert not error.retryable
    assert "'from'" in str(error) and "AML_WORKER_SMTP_FROM" in str(error)
    assert mailbox.received == []


async def test_missing_host_is_not_retryable():
    """No AML_WORKER_SMTP_HOST: a configuration error."""
    planned, params = planned_for(mail())

    error = await failure(smtp_settings(25, smtp_host=None), planned, params)

    assert not error.retryable
    assert "AML_WORKER_SMTP_HOST" in str(error)


async def test_starttls_required_but_not_offered_is_not_retryable(smtpd):
    """The default mode insists on STARTTLS; a server without it is a configuration error."""
    mailbox, port = smtpd()
    planned, params = planned_for(mail())

    error = await failure(smtp_settings(port, smtp_tls="starttls"), planned, params)

    assert not error.retryable
    assert "STARTTLS" in str(error)
    assert mailbox.received == []


# --- AUTH ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
async def test_login_with_the_right_credentials(smtpd, mechanism):
    """AUTH LOGIN and AUTH PLAIN with the configured username and SecretStr-like password."""
    other = {"LOGIN": "PLAIN", "PLAIN": "LOGIN"}[mechanism]
    mailbox, port = smtpd(auth=True, auth_exclude_mechanism=[other])
    settings = smtp_settings(port, smtp_username="mailer", smtp_password=Secret("pa55-w0rd-x"))
    planned, params = planned_for(mail())

    await send(settings, planned, params)

    assert mailbox.logins == [(mechanism, "mailer")]
    assert len(mailbox.received) == 1


async def test_login_with_wrong_credentials_is_not_retryable(smtpd):
    """535: permanent; the password never appears in the message."""
    mailbox, port = smtpd(auth=True)
    settings = smtp_settings(port, smtp_username="mailer", smtp_password=Secret("wrong-pw-123"))
    planned, params = planned_for(mail())

    error = await failure(settings, planned, params)

    assert not error.retryable
    assert "535" in str(error) and "mailer" in str(error)
    assert "wrong-pw-123" not in str(error)
    assert mailbox.received == []


async def test_the_smtp_password_never_appears_in_error_messages(smtpd):
    """Even a server quoting the password back has it shown as `***`."""
    mailbox, port = smtpd(auth=True)
    mailbox.data_reply = "554 5.7.1 Content rejected: saw pa55-w0rd-x in the session"
    settings = smtp_settings(port, smtp_username="mailer", smtp_password=Secret("pa55-w0rd-x"))
    planned, params = planned_for(mail())

    error = await failure(settings, planned, params)

    assert not error.retryable
    assert "saw *** in the session" in str(error)
    assert "pa55-w0rd-x" not in str(error)


class Secret:
    """Behaves like pydantic's SecretStr for the executor."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"


# --- refusals and outages -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "retryable"),
    [
        ("550 5.7.1 Message rejected as spam", False),
        ("554 5.6.0 Message content refused", False),
        ("451 4.3.0 Mail server temporarily rejected message", True),
        ("452 4.3.1 Insufficient system storage", True),
    ],
)
async def test_data_reply_decides_whether_to_retry(smtpd, reply, retryable):
    """5xx to DATA is permanent, 4xx temporary; the reply is quoted."""
    mailbox, port = smtpd()
    mailbox.data_reply = reply
    planned, params = planned_for(mail())

    error = await failure(smtp_settings(port), planned, params)

    assert error.retryable is retryable
    assert reply.split()[0] in str(error) and reply.split()[-1] in str(error)


@pytest.mark.parametrize(
    ("reply", "retryable"),
    [("550 5.1.1 No such user", False), ("450 4.2.1 Mailbox busy", True)],
)
async def test_every_recipient_refused(smtpd, reply, retryable):
    """All recipients refused at RCPT: 550 is permanent, 450 temporary; nothing delivered."""
    mailbox, port = smtpd()
    mailbox.refuse = {"ops@example.com": reply}
    planned, params = planned_for(mail())

    error = await failure(smtp_settings(port), planned, params)

    assert error.retryable is retryable
    assert "ops@example.com" in str(error) and reply.split()[0] in str(error)
    assert mailbox.received == []


async def test_some_recipients_refused_is_sent_and_reported(smtpd):
    """Accepted for some: the message went out (a retry would repeat it); refusals returned."""
    mailbox, port = smtpd()
    mailbox.refuse = {"gone@example.com": "550 5.1.1 No such user"}
    planned, params = planned_for(mail(to=["ops@example.com", "gone@example.com"]))

    with structlog.testing.capture_logs() as logs:
        facts = await send(smtp_settings(port), planned, params)

    assert [got.rcpt_tos for got in mailbox.received] == [["ops@example.com"]]
    assert facts is not None
    assert facts["refused"] == {"gone@example.com": "550 5.1.1 No such user"}
    [warning] = [entry for entry in logs if entry["event"] == "email_recipients_refused"]
    assert warning["log_level"] == "warning"
    assert warning["refused"] == facts["refused"]


async def test_server_down_is_retryable():
    """Nothing listening on the port: retryable."""
    planned, params = planned_for(mail())

    error = await failure(smtp_settings(free_port()), planned, params)

    assert error.retryable
    assert "connection failed" in str(error)


async def test_silent_server_times_out_retryably():
    """A server that accepts but never greets costs `smtp_timeout`, then retryable."""

    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # never says "220": the client must give up

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    planned, params = planned_for(mail())
    try:
        started = asyncio.get_running_loop().time()
        error = await failure(smtp_settings(port, smtp_timeout=0.3), planned, params)
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        for writer in connections:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        server.close()
        await server.wait_closed()

    assert error.retryable
    assert 0.25 <= elapsed < 2


# --- TLS ----------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (skips without `cryptography`)."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _tls_server_kwargs(mode: str, cert: tuple[Path, Path]) -> dict[str, Any]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert)
    if mode == "starttls":
        return {"tls_context": context, "require_starttls": True}
    return {"ssl_context": context}


@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_tls_modes_with_a_trusted_certificate(smtpd, certificate, monkeypatch, mode):
    """STARTTLS and implicit TLS deliver when the server's certificate is trusted."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    mailbox, port = smtpd(**_tls_server_kwargs(mode, certificate))
    planned, params = planned_for(mail())

    await send(smtp_settings(port, smtp_tls=mode), planned, params)

    assert len(mailbox.received) == 1


@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_untrusted_certificate_is_not_retryable(smtpd, certificate, mode):
    """A certificate that fails verification will not heal by retrying: not retryable."""
    mailbox, port = smtpd(**_tls_server_kwargs(mode, certificate))
    planned, params = planned_for(mail())

    error = await failure(smtp_settings(port, smtp_tls=mode), planned, params)

    assert not error.retryable
    assert "certificate" in str(error).lower()
    assert mailbox.received == []


# --- untrusted event data (DESIGN §7) ---------------------------------------------------------

HOSTILE_RECIPIENTS = [
    "eve@evil.example, ops",  # a comma adds a recipient to a naive parser
    "eve@evil.example; ops",
    "ops\r\nBcc: eve@evil.example\r\nX-A: ",
    "ops\nBcc: eve@evil.example\nX-A: ",
    "Eve <eve@evil.example>, ops",  # a display name with a second address
    '"eve@evil.example" <eve@evil.example> ops',
    "eve@evil.example> <ops",
    "=?utf-8?q?eve=40evil.example?= ops",  # an encoded word a mail reader would decode
    "ops@example.com (comment) eve",
    "op\x00s",
    "op\u202es",  # a bidi override disguises the address it is part of
    "",
]


@pytest.mark.parametrize("field", ["to", "cc", "from"])
@pytest.mark.parametrize("user", HOSTILE_RECIPIENTS)
async def test_a_rendered_recipient_is_exactly_one_address_or_nothing_is_sent(smtpd, field, user):
    """`{{ data.user }}@example.com` with a comma, semicolon, line break, display name or
    anything else that is not one address: a permanent failure naming the parameter, and
    the server sees no message (the action dead-letters)."""
    mailbox, port = smtpd()
    planned, params = planned_for(
        mail(
            **{
                field: "{{ data.user }}@example.com"
                if field == "from"
                else ["{{ data.user }}@example.com"]
            }
        ),
        eg(data={"user": user}),
    )

    error = await failure(smtp_settings(port), planned, params)

    assert not error.retryable
    assert f"email: '{field}' entry" in str(error) and "not exactly one email address" in str(error)
    assert "\n" not in str(error) and "\r" not in str(error)
    assert mailbox.received == []


async def test_a_display_name_and_an_international_domain_are_still_one_address(smtpd):
    """What a template renders may be `Name <address>`, or a domain in another script."""
    mailbox, port = smtpd()
    planned, params = planned_for(
        mail(to=["{{ data.name }} <{{ data.user }}@example.com>", "ops@{{ data.host }}"]),
        eg(data={"name": "Zoë Müller", "user": "zoe.m+ml", "host": "bücher.example"}),
    )

    await send(smtp_settings(port), planned, params)

    [got] = mailbox.received
    assert got.rcpt_tos == ["zoe.m+ml@example.com", "ops@bücher.example"]
    # A non-ASCII address makes it an SMTPUTF8 message: its headers are raw UTF-8.
    to = "To: Zoë Müller <zoe.m+ml@example.com>, ops@bücher.example"
    assert to.encode() in got.content.splitlines()


# Address syntax and what breaks it, mixed with the shared hostile strings (tests/hostile.py).
hostile_address = st.lists(
    st.one_of(
        st.sampled_from(
            ["ops", "@", "example.com", "eve@evil.example", ",", ";", " ", "<", ">", '"', "'",
             "(", ")", "\\", ".", "\r\n", "\n", "Bcc: ", "=?utf-8?q?", "?=", "\udc80",
             "\u202e", "\u00a0", "Zoë", ":", "[", "]"]
        ),
        hostile_text,
    ),
    max_size=6,
).map("".join)  # fmt: skip

EXPECTED_HEADERS = {
    "from", "to", "cc", "subject", "date", "message-id", "auto-submitted", "mime-version",
    "content-type", "content-transfer-encoding",
}  # fmt: skip


@hypothesis.settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@hypothesis.given(
    a=st.one_of(
        st.sampled_from(["ops@example.com", "Ops Team <ops@example.com>", ""]), hostile_address
    ),
    b=st.one_of(st.sampled_from(["ops", "ops.team", "a+b"]), hostile_address),
    s=hostile_text,
)
async def test_hostile_data_never_adds_a_recipient_or_a_header(smtpd, a, b, s):
    """Generated hostile strings (separators, line breaks, display names, encoded words,
    surrogates, private-use and marker characters) in `to`, `cc` and the subject: either a
    permanent failure naming the parameter and nothing sent, or a message whose envelope
    and headers hold one recipient per entry (a blank entry: none) and no other header,
    with a one-line subject."""
    mailbox, port = smtpd()
    action = mail(
        to=["{{ data.a }}"],
        cc=["{{ data.b }}@example.com"],
        subject="Run {{ data.s }}",
        **{"from": "alerts@example.org"},
    )
    planned, params = planned_for(action, eg(data={"a": a, "b": b, "s": s}))
    try:
        await send(smtp_settings(port), planned, params)
    except ActionError as error:
        assert not error.retryable
        assert "email: 'to' entry" in str(error) or "email: 'cc' entry" in str(error)
        assert mailbox.received == []
        hypothesis.event("refused")
        return
    hypothesis.event("sent")
    [got] = mailbox.received
    to = got.message["To"].addresses if got.message["To"] else ()  # a blank entry is skipped
    cc = got.message["Cc"].addresses
    assert len(to) == (1 if a.strip() else 0) and len(cc) == 1
    assert got.rcpt_tos == list(dict.fromkeys(x.addr_spec for x in (*to, *cc)))
    assert cc[0].addr_spec.endswith("@example.com")
    assert {name.lower() for name in got.message} <= EXPECTED_HEADERS
    assert all(len(got.message.get_all(name) or ()) <= 1 for name in ("To", "Cc", "Subject"))
    subject = str(got.message["Subject"])
    assert subject.startswith("Run") and "\n" not in subject and "\r" not in subject


async def test_a_subject_with_line_breaks_stays_one_header(smtpd):
    """CR/LF and other control characters from event data become spaces."""
    mailbox, port = smtpd()
    planned, params = planned_for(
        mail(subject="Run {{ data.s }} failed"),
        eg(data={"s": "r1\r\nBcc: eve@evil.example\r\n\r\nbody\x00\x1b"}),
    )

    await send(smtp_settings(port), planned, params)

    [got] = mailbox.received
    assert got.message["Subject"] == "Run r1 Bcc: eve@evil.example body failed"
    assert got.message.get_all("Bcc") is None
    assert got.rcpt_tos == ["ops@example.com"]


async def test_the_html_body_escapes_event_data_and_keeps_the_authors_markup(smtpd):
    """`<script>` and an attribute break-out from event data arrive escaped."""
    mailbox, port = smtpd()
    planned, params = planned_for(
        mail(html='<p title="{{ data.t }}">Run <b>{{ data.n }}</b></p>'),
        eg(data={"n": "<script>alert(1)</script>", "t": '" onmouseover="alert(1)'}),
    )

    await send(smtp_settings(port), planned, params)

    html = mailbox.received[0].message.get_body(("html",)).get_content().strip()
    assert html == (
        '<p title="&#34; onmouseover=&#34;alert(1)">Run '
        "<b>&lt;script&gt;alert(1)&lt;/script&gt;</b></p>"
    )


async def test_lone_surrogates_are_sent_as_replacement_characters(smtpd):
    """A lone surrogate in the subject, the bodies or a display name: the message goes out
    (U+FFFD in its place) instead of an UnicodeEncodeError."""
    mailbox, port = smtpd()
    planned, params = planned_for(
        mail(subject="Run {{ data.s }}", body="b {{ data.s }}", html="<i>{{ data.s }}</i>"),
        eg(subject="experiments/\udc80", data={"s": "x\udc80y\ud800"}),
    )

    await send(smtp_settings(port), planned, params)

    [got] = mailbox.received
    assert got.message["Subject"] == "Run x\ufffdy\ufffd"
    assert got.message.get_body(("plain",)).get_content().strip() == "b x\ufffdy\ufffd"
    assert got.message.get_body(("html",)).get_content().strip() == "<i>x\ufffdy\ufffd</i>"


async def test_a_reply_echoing_the_password_is_redacted_before_it_is_cut(smtpd):
    """A long server reply ending with the password: masked whole, not cut first (which
    left most of the secret in the excerpt)."""
    password = "Zq8vL2mN4pR6tY1xC3bV5nM7kJ9hG0fD2sA4qW6eR8tY0uI2oP4a"  # 52 characters
    mailbox, port = smtpd(auth=True)
    mailbox.data_reply = "554 5.7.1 " + "x" * 170 + " " + password
    settings = smtp_settings(port, smtp_username="mailer", smtp_password=Secret(password))
    mailbox.credentials = (b"mailer", password.encode())
    planned, params = planned_for(mail())

    error = await failure(settings, planned, params)

    assert not error.retryable and "554" in str(error)
    assert_no_fragment(password, str(error))


def assert_no_fragment(secret: str, text: str, size: int = 8) -> None:
    """No `size`-character piece of `secret` appears in `text`."""
    pieces = {secret[i : i + size] for i in range(len(secret) - size + 1)}
    assert not [piece for piece in pieces if piece in text], text
