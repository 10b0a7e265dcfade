"""E-mail for reports: one multipart/alternative message, sent with ``smtplib`` in a thread.

``build_message`` is pure (the text and HTML parts in, an ``EmailMessage`` out);
``send_message`` opens one SMTP connection per message with the ``INNKT_SMTP_*``
settings (plain, STARTTLS or SMTP over TLS; a login when a user is set) and raises
``MailError`` for anything that goes wrong, the SMTP server's answer included.
"""

from __future__ import annotations

import asyncio
import email.utils
import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage

from innkt_analytics.server._settings import ServerSettings
from innkt_analytics.shared._exceptions import InnktError

__all__ = ["MailError", "build_message", "send_message"]


class MailError(InnktError):
    """The message could not be handed to the SMTP server (not configured, refused, down)."""


def build_message(
    settings: ServerSettings, to: Sequence[str], subject: str, text: str, html: str
) -> EmailMessage:
    """A multipart/alternative message: ``text`` as text/plain, then ``html`` as text/html."""
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid(domain="innkt-analytics")
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def _send(settings: ServerSettings, message: EmailMessage) -> None:
    host, port, timeout = settings.smtp_host, settings.smtp_port, settings.smtp_timeout
    smtp: smtplib.SMTP
    if settings.smtp_security == "ssl":
        smtp = smtplib.SMTP_SSL(host, port, timeout=timeout, context=ssl.create_default_context())
    else:
        smtp = smtplib.SMTP(host, port, timeout=timeout)
    with smtp:
        if settings.smtp_security == "starttls":
            smtp.starttls(context=ssl.create_default_context())
        if settings.smtp_user:
            smtp.login(settings.smtp_user, settings.smtp_password)
        refused = smtp.send_message(message)
    if refused:
        raise MailError(f"recipients refused: {sorted(refused)}")


async def send_message(settings: ServerSettings, message: EmailMessage) -> None:
    """Deliver ``message`` to the SMTP server. Raises ``MailError``."""
    if not settings.smtp_host:
        raise MailError("no SMTP server configured (INNKT_SMTP_HOST)")
    try:
        await asyncio.to_thread(_send, settings, message)
    except (smtplib.SMTPException, OSError) as exc:
        raise MailError(f"{type(exc).__name__}: {exc}") from None
