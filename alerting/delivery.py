"""Delivering one email: through an SMTP relay (TLS and auth from settings) or, when
SMTP_HOST is unset, as an `.eml` file in the local outbox.

A failed delivery says whether the message *certainly* did not go out (the
relay refused it, or the connection failed before the message was handed over:
safe to retry) or whether the outcome is *uncertain* (the connection dropped
while the relay was taking the message). The alerts flow retries the first and,
to never send twice, does not retry the second (see README.md, "Alerts: exactly one email")."""

from __future__ import annotations

import os
import smtplib
import ssl
from dataclasses import dataclass, field
from email import message_from_bytes
from email.errors import HeaderParseError
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Protocol

from fsp.settings import Settings

IMPLICIT_TLS_PORT = 465


class DeliveryFailed(Exception):
    """A send that did not succeed. `uncertain`: the relay may have accepted it anyway.
    `relay_down`: nothing could be sent at all (no connection), so the rest of the
    batch should wait for the next run instead of each failing in turn."""

    def __init__(self, reason: str, *, uncertain: bool = False, relay_down: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.uncertain = uncertain
        self.relay_down = relay_down


class Mailer(Protocol):
    """Anything that can deliver a message and tell where messages go."""

    def send(self, message: EmailMessage) -> None: ...

    def was_delivered(self, message_id: str) -> bool | None:
        """True/False when the transport can tell; None when it cannot (SMTP)."""
        ...

    def describe(self) -> str: ...


def _wire_bytes(message: EmailMessage) -> bytes:
    """The message as SMTP wants it on the wire: CRLF line endings."""
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


RECIPIENT_HEADERS = ("To", "Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc")


def single_recipient(message: EmailMessage) -> str:
    """The one address a message goes to, read from its bytes as they will leave (so a
    header smuggled into a value, e.g. a Bcc decoded from an encoded word, shows up).
    DeliveryFailed unless there is exactly one To header with one address and no other
    recipient header: a message is never delivered to anyone else."""
    parsed = message_from_bytes(_wire_bytes(message), policy=default_policy)
    present = {name: len(parsed.get_all(name) or []) for name in RECIPIENT_HEADERS}
    others = [name for name, n in present.items() if n and name != "To"]
    if present["To"] != 1 or others:
        raise DeliveryFailed(
            f"refusing to send {message['Message-ID']}: recipient headers {present}"
        )
    try:
        addresses = [a.addr_spec for a in parsed["To"].addresses]
    except (AttributeError, IndexError, ValueError, HeaderParseError) as exc:
        raise DeliveryFailed(f"refusing to send: unreadable To header ({exc})") from exc
    if len(addresses) != 1:
        raise DeliveryFailed(f"refusing to send: {len(addresses)} addresses in To")
    return addresses[0]


def outbox_file_name(message_id: str) -> str:
    """The outbox file of a message: its Message-ID without angle brackets, + .eml."""
    core = message_id.strip().strip("<>").replace("/", "_")
    return f"{core}.eml"


@dataclass
class OutboxMailer:
    """Writes each message to `folder/<message-id>.eml` atomically (write + rename),
    so a file either exists whole or not at all, and its name proves delivery."""

    folder: Path

    def send(self, message: EmailMessage) -> None:
        single_recipient(message)
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / outbox_file_name(str(message["Message-ID"]))
        partial = target.with_suffix(".eml.partial")
        try:
            partial.write_bytes(message.as_bytes())
            os.replace(partial, target)
        except OSError as exc:
            raise DeliveryFailed(f"cannot write {target}: {exc}") from exc

    def was_delivered(self, message_id: str) -> bool | None:
        return (self.folder / outbox_file_name(message_id)).exists()

    def describe(self) -> str:
        return f"outbox folder {self.folder}"


@dataclass
class SmtpMailer:
    """One connection per message: a relay that restarts between messages costs nothing.

    TLS: implicit TLS on port 465, STARTTLS on any other port when `use_tls`."""

    host: str
    port: int
    user: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line
    use_tls: bool = False
    timeout: float = 10.0

    def _connect(self) -> smtplib.SMTP:
        if self.use_tls and self.port == IMPLICIT_TLS_PORT:
            return smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        if self.use_tls:
            client.starttls(context=ssl.create_default_context())
        return client

    def send(self, message: EmailMessage) -> None:
        sender = message["From"].addresses[0].addr_spec
        recipients = [single_recipient(message)]
        try:
            client = self._connect()
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryFailed(
                f"cannot connect to {self.describe()}: {exc}", relay_down=True
            ) from exc
        try:
            self._hand_over(client, message, sender, recipients)
        finally:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()

    def _hand_over(
        self, client: smtplib.SMTP, message: EmailMessage, sender: str, recipients: list[str]
    ) -> None:
        """Envelope first (certain failures), then DATA (the only uncertain step)."""
        try:
            client.ehlo_or_helo_if_needed()
            if self.user:
                client.login(self.user, self.password or "")
            code, reply = client.mail(sender)
            if code != 250:
                raise DeliveryFailed(f"MAIL FROM refused: {code} {reply!r}")
            for rcpt in recipients:
                code, reply = client.rcpt(rcpt)
                if code not in (250, 251):
                    raise DeliveryFailed(f"RCPT TO {rcpt} refused: {code} {reply!r}")
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryFailed(f"{self.describe()} refused the envelope: {exc}") from exc
        try:
            code, reply = client.data(_wire_bytes(message))
        except smtplib.SMTPDataError as exc:  # the relay answered "no": certainly not taken
            raise DeliveryFailed(f"{self.describe()} refused the message: {exc}") from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryFailed(
                f"connection to {self.describe()} lost while handing over the message: {exc}",
                uncertain=True,
            ) from exc
        if code != 250:
            raise DeliveryFailed(f"{self.describe()} refused the message: {code} {reply!r}")

    def was_delivered(self, message_id: str) -> bool | None:
        return None  # an SMTP relay cannot be asked what it accepted

    def describe(self) -> str:
        return f"SMTP relay {self.host}:{self.port}"


def make_mailer(settings: Settings) -> Mailer:
    """SMTP when SMTP_HOST is set, else the outbox folder under the state folder."""
    if settings.smtp_host:
        return SmtpMailer(
            host=settings.smtp_host,
            port=settings.smtp_port,
            user=settings.smtp_user,
            password=(
                settings.smtp_password.get_secret_value() if settings.smtp_password else None
            ),
            use_tls=settings.smtp_use_tls,
            timeout=settings.smtp_timeout_seconds,
        )
    return OutboxMailer(settings.outbox_dir)
