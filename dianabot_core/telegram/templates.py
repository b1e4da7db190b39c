"""Message templates: per-language texts for the notifications the jobs send.

A ``NotificationRequested`` names a template key and its params; the text is chosen by the user's
``language_code`` (``es-MX`` → ``es``), falling back to English. Texts are sent as plain text (no
parse mode), so params need no escaping. A missing template or param is a permanent error: the
event will never render, so it goes to the dead letters with the reason.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field

from dianabot_contracts.events import Button, MessageContent
from dianabot_core.telegram.errors import TelegramPermanentError

FALLBACK_LANGUAGE = "en"


class TemplateError(TelegramPermanentError):
    """The template is unknown or its params are incomplete."""


@dataclass(frozen=True)
class ButtonTemplate:
    text: str
    url: str | None = None
    callback_data: str | None = None


@dataclass(frozen=True)
class Template:
    text: str
    buttons: tuple[tuple[ButtonTemplate, ...], ...] = field(default=())


def _renew(label: str) -> tuple[tuple[ButtonTemplate, ...], ...]:
    return ((ButtonTemplate(label, url="{renew_url}"),),)


TEMPLATES: dict[str, dict[str, Template]] = {
    "subscription.reminder_7d": {
        "es": Template(
            "Tu suscripción VIP termina en 7 días ({end_date}). Renueva para no perderte nada.",
            _renew("Renovar"),
        ),
        "en": Template(
            "Your VIP subscription ends in 7 days ({end_date}). Renew so you miss nothing.", _renew("Renew")
        ),
    },
    "subscription.reminder_3d": {
        "es": Template("Quedan 3 días de tu suscripción VIP (termina el {end_date}).", _renew("Renovar")),
        "en": Template("3 days left on your VIP subscription (ends {end_date}).", _renew("Renew")),
    },
    "subscription.reminder_1d": {
        "es": Template("Mañana ({end_date}) termina tu suscripción VIP.", _renew("Renovar ahora")),
        "en": Template("Your VIP subscription ends tomorrow ({end_date}).", _renew("Renew now")),
    },
    # Reminder windows other than 7d/3d/1d (configurable) use this one.
    "subscription.reminder": {
        "es": Template(
            "Tu suscripción VIP termina pronto ({end_date}). Renueva para no perderte nada.",
            _renew("Renovar"),
        ),
        "en": Template(
            "Your VIP subscription ends soon ({end_date}). Renew so you miss nothing.", _renew("Renew")
        ),
    },
    "subscription.expired_farewell": {
        "es": Template(
            "Tu suscripción VIP ha terminado y ya no estás en el canal VIP. Gracias por estar aquí; "
            "cuando quieras volver, renueva y te invitamos de nuevo.",
            _renew("Volver al VIP"),
        ),
        "en": Template(
            "Your VIP subscription has ended and you have left the VIP channel. Thank you for being "
            "here; renew whenever you like and we will invite you back.",
            _renew("Back to VIP"),
        ),
    },
    "subscription.renewal_failed": {
        "es": Template(
            "No pudimos renovar tu suscripción VIP. Tienes {grace_hours} horas para actualizar el pago.",
            _renew("Actualizar pago"),
        ),
        "en": Template(
            "We could not renew your VIP subscription. You have {grace_hours} hours to update your payment.",
            _renew("Update payment"),
        ),
    },
    "subscription.invite_link": {
        "es": Template(
            "¡Bienvenido al VIP! Tu enlace es personal, de un solo uso y caduca en {expires_in}.",
            ((ButtonTemplate("Entrar al canal VIP", url="{invite_link}"),),),
        ),
        "en": Template(
            "Welcome to VIP! Your link is personal, single-use, and expires in {expires_in}.",
            ((ButtonTemplate("Join the VIP channel", url="{invite_link}"),),),
        ),
    },
    "mission.prompt": {
        "es": Template(
            "Nueva misión: {mission_title}. Complétala y gana {besitos} besitos.",
            ((ButtonTemplate("Ver misión", callback_data="mission:{mission_key}"),),),
        ),
        "en": Template(
            "New mission: {mission_title}. Complete it to earn {besitos} besitos.",
            ((ButtonTemplate("View mission", callback_data="mission:{mission_key}"),),),
        ),
    },
    "mission.completed": {
        "es": Template("¡Misión completada: {mission_title}! +{besitos} besitos (saldo: {balance})."),
        "en": Template("Mission complete: {mission_title}! +{besitos} besitos (balance: {balance})."),
    },
}


def language_of(language_code: str | None) -> str:
    """``es-MX`` → ``es``; unknown or missing → the fallback."""
    if not language_code:
        return FALLBACK_LANGUAGE
    return language_code.replace("_", "-").split("-", 1)[0].lower()


def render(key: str, params: Mapping[str, str], language_code: str | None) -> MessageContent:
    """The message for template `key` in the user's language (or English), with `params` filled in."""
    variants = TEMPLATES.get(key)
    if variants is None:
        raise TemplateError(f"unknown template {key!r}")
    template = variants.get(language_of(language_code)) or variants[FALLBACK_LANGUAGE]
    buttons = tuple(
        tuple(
            Button(
                text=_fill(key, b.text, params),
                url=None if b.url is None else _fill(key, b.url, params),
                callback_data=None if b.callback_data is None else _fill(key, b.callback_data, params),
            )
            for b in row
        )
        for row in template.buttons
    )
    return MessageContent(text=_fill(key, template.text, params), buttons=buttons)


def required_params(key: str) -> frozenset[str]:
    """Every param any language of the template uses."""
    names: set[str] = set()
    for template in TEMPLATES[key].values():
        pieces = [template.text] + [
            s for row in template.buttons for b in row for s in (b.text, b.url, b.callback_data) if s
        ]
        for piece in pieces:
            names.update(name for _, name, _, _ in string.Formatter().parse(piece) if name)
    return frozenset(names)


def _fill(key: str, text: str, params: Mapping[str, str]) -> str:
    try:
        return text.format_map(params)
    except KeyError as missing:
        raise TemplateError(f"template {key!r} needs param {missing.args[0]!r}") from None
