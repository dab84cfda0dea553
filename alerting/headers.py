"""Header safety for the tutor's email: every value built from data (the tutor's name
and address, the subject, ids) goes through `header_text` / `safe_address`, and the
built message is read back to prove it carries the alert's headers only and exactly
one recipient. A value can never add a header or a recipient, however encoded."""

from __future__ import annotations

import re
from email import message_from_bytes
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any, Final

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def plain(value: Any) -> str:
    """A value made safe for the plain-text part and headers: every control character
    (line breaks included: no header injection) becomes a space."""
    return _CONTROL.sub(" ", str(value))


class InvalidRecipient(ValueError):
    """The tutor's address cannot be used; only that email is set aside."""


class UnsafeHeader(HeaderParseError):
    """A header of the built message does not read back as it was meant (an extra
    header or recipient): that email is set aside, never sent."""


_ENCODED_WORD_START = "=?"
_HEADER_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""C0 and C1 controls and the Unicode line/paragraph separators: all that str.splitlines
(and so the email library) may take for a line break."""
_MAX_DECODING_ROUNDS = 5
_ADDR_SPEC = re.compile(r"[^\s@<>()\[\],;:\\]+@[^\s@<>()\[\],;:\\\"]+")


def _decoded_once(text: str) -> str:
    """RFC 2047 encoded words decoded, the way the email library reads a header value
    it is given (it would decode `=?utf-8?q?=0D=0A?=` into a real line break)."""
    try:
        return str(make_header(decode_header(text)))
    except (LookupError, UnicodeError, HeaderParseError, ValueError):
        try:  # an unknown charset, or raw non-ASCII beside an encoded word
            return str(default_policy.header_factory("X-Decode", text))
        except (LookupError, UnicodeError, HeaderParseError, ValueError):
            return text


def header_text(value: Any) -> str:
    """A value made safe for a header built from data: encoded words decoded (until
    nothing changes), every control character or line separator (CR, LF, NEL, U+2028:
    no header injection) a space, and any `=?` left split as `= ?`, so the library
    cannot decode a line break into it later."""
    text = str(value)
    for _ in range(_MAX_DECODING_ROUNDS):
        if _ENCODED_WORD_START not in text:
            break
        decoded = _decoded_once(text)
        if decoded == text:
            break
        text = decoded
    return _HEADER_BREAKS.sub(" ", text).replace(_ENCODED_WORD_START, "= ?").strip()


def safe_address(display_name: Any, addr_spec: Any) -> Address:
    """One address for a header: the display name through `header_text`, the address
    itself plain (one @, no spaces, controls, brackets or encoded words) and read back
    by the library unchanged. InvalidRecipient otherwise."""
    spec = str(addr_spec or "")
    if not _ADDR_SPEC.fullmatch(spec) or _HEADER_BREAKS.search(spec) or _ENCODED_WORD_START in spec:
        raise InvalidRecipient(f"invalid recipient {spec!r}: not a plain address")
    try:
        address = Address(header_text(display_name), addr_spec=spec)
    except (ValueError, IndexError, HeaderParseError) as exc:
        raise InvalidRecipient(f"invalid recipient {spec!r}: {exc}") from exc
    if address.addr_spec != spec:
        raise InvalidRecipient(f"invalid recipient {spec!r}: reads as {address.addr_spec!r}")
    return address


HEADERS: Final = (
    "Subject",
    "From",
    "To",
    "Message-ID",
    "Date",
    "X-FSP-Session-Id",
    "X-FSP-Model-Version",
    "Auto-Submitted",
)
"""The headers an alert sets, besides the MIME ones; nothing else may appear."""
_MIME_HEADERS: Final = ("Content-Type", "MIME-Version", "Content-Transfer-Encoding")


def check_headers(message: EmailMessage, to: str) -> None:
    """UnsafeHeader unless the message, as it will be sent, reads back with exactly the
    alert's headers, once each, and `to` as its single recipient."""
    parsed = message_from_bytes(message.as_bytes(), policy=default_policy)
    names = [name.lower() for name in parsed]
    allowed = {name.lower() for name in (*HEADERS, *_MIME_HEADERS)}
    extra = sorted(set(names) - allowed)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if extra or repeated:
        raise UnsafeHeader(f"unexpected headers {extra or repeated} in the message to {to!r}")
    try:
        addresses = [a.addr_spec for a in parsed["To"].addresses]
    except (AttributeError, IndexError, ValueError, HeaderParseError) as exc:
        raise UnsafeHeader(f"the To header does not read back: {exc}") from exc
    if addresses != [to]:
        raise UnsafeHeader(f"the To header reads as {addresses!r}, not [{to!r}]")
