"""How content becomes Bot API calls, and how templates render in the user's language."""

from __future__ import annotations

import pytest

from dianabot_contracts.events import Button, Media, MessageContent
from dianabot_core.telegram.content import plan_parts
from dianabot_core.telegram.errors import TelegramPermanentError
from dianabot_core.telegram.templates import TEMPLATES, TemplateError, language_of, render, required_params

RENEW = ((Button(text="Renew", url="https://example.org/renew"),),)
PHOTO = Media(kind="photo", file="https://example.org/a.jpg")
VIDEO = Media(kind="video", file="https://example.org/b.mp4")


def test_text_with_buttons_is_one_send_message() -> None:
    [part] = plan_parts(MessageContent(text="hi", buttons=RENEW, protect_content=True))
    assert (part.method, part.text, part.buttons, part.protect_content) == ("sendMessage", "hi", RENEW, True)


def test_one_photo_carries_its_caption_and_buttons() -> None:
    [part] = plan_parts(MessageContent(text="look", media=(PHOTO,), buttons=RENEW))
    assert (part.method, part.text, part.media, part.buttons) == ("sendPhoto", "look", (PHOTO,), RENEW)


def test_a_caption_too_long_for_media_follows_as_a_message() -> None:
    text = "x" * 1500
    media, message = plan_parts(MessageContent(text=text, media=(VIDEO,), buttons=RENEW))
    assert (media.method, media.text, media.buttons) == ("sendVideo", None, ())
    assert (message.method, message.text, message.buttons) == ("sendMessage", text, RENEW)


def test_an_album_with_buttons_is_the_album_then_the_text_with_buttons() -> None:
    album, message = plan_parts(MessageContent(text="both", media=(PHOTO, VIDEO), buttons=RENEW))
    assert (album.method, album.text, album.media) == ("sendMediaGroup", None, (PHOTO, VIDEO))
    assert (message.method, message.text, message.buttons) == ("sendMessage", "both", RENEW)


def test_an_album_without_buttons_is_one_call_with_the_caption() -> None:
    [album] = plan_parts(MessageContent(text="both", media=(PHOTO, VIDEO)))
    assert (album.method, album.text) == ("sendMediaGroup", "both")


@pytest.mark.parametrize(
    ("media", "buttons", "reason"),
    [
        ((PHOTO, Media(kind="animation", file="a.gif")), (), "animations"),
        ((PHOTO, Media(kind="document", file="a.pdf")), (), "documents"),
        ((PHOTO,) * 11, (), "at most 10"),
        ((PHOTO, VIDEO), RENEW, "need a text"),
    ],
)
def test_content_telegram_cannot_send_is_a_permanent_error(
    media: tuple[Media, ...], buttons: tuple[tuple[Button, ...], ...], reason: str
) -> None:
    with pytest.raises(TelegramPermanentError, match=reason):
        plan_parts(MessageContent(text=None if buttons else "t", media=media, buttons=buttons))


@pytest.mark.parametrize(
    ("code", "language"), [("es", "es"), ("es-MX", "es"), ("ES_ar", "es"), ("en-GB", "en"), (None, "en")]
)
def test_language_of(code: str | None, language: str) -> None:
    assert language_of(code) == language


def test_templates_render_in_the_users_language_with_buttons() -> None:
    params = {"end_date": "2026-02-01", "renew_url": "https://t.me/dianabot?start=renew"}
    spanish = render("subscription.reminder_7d", params, "es-ES")
    assert spanish.text is not None
    assert spanish.text.startswith("Tu suscripción VIP termina en 7 días (2026-02-01)")
    assert spanish.buttons[0][0].text == "Renovar"
    assert spanish.buttons[0][0].url == params["renew_url"]
    english = render("subscription.reminder_7d", params, "pt-BR")  # no Portuguese: English
    assert english.text is not None
    assert english.text.startswith("Your VIP subscription ends in 7 days")


def test_a_missing_param_or_template_is_a_permanent_error() -> None:
    with pytest.raises(TemplateError, match="renew_url"):
        render("subscription.reminder_1d", {"end_date": "tomorrow"}, "en")
    with pytest.raises(TemplateError, match="unknown template"):
        render("subscription.nope", {}, "en")


def test_every_template_has_english_and_spanish_with_the_same_params() -> None:
    for key, variants in TEMPLATES.items():
        assert {"en", "es"} <= set(variants), key
        params = dict.fromkeys(required_params(key), "x")
        params.update({k: "https://example.org" for k in params if k.endswith(("_url", "_link"))})
        for language in variants:
            assert render(key, params, language).text
