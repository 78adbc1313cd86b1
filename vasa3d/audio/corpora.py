"""Sentences and espeak-ng voices per language, for multilingual synthetic speech.

The sentences ship in ``vasa3d/audio/assets/corpora.json`` (one list per language, written for this
project). ``LANGUAGE_VOICES`` names the espeak-ng voices (accents) of each language and
``VOICE_VARIANTS`` the variants (``voice+variant``: other speakers, male and female, and espeak's
Klatt synthesiser) every voice can be combined with. Languages span families and scripts: Germanic,
Romance, Slavic, Turkic, Semitic, Indo-Aryan, Sinitic, Japonic, Koreanic and Austroasiatic; Latin,
Cyrillic, Arabic, Devanagari, Han, kana and Hangul.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

CORPORA_PATH = Path(__file__).with_name("assets") / "corpora.json"

LANGUAGE_VOICES: dict[str, tuple[str, ...]] = {
    "en": ("en-us", "en-gb", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-us-nyc"),
    "de": ("de",), "fr": ("fr-fr", "fr-be", "fr-ch"), "es": ("es", "es-419"), "it": ("it",),
    "pt": ("pt", "pt-br"), "nl": ("nl",), "pl": ("pl",), "cs": ("cs",), "ru": ("ru", "ru-lv"), "tr": ("tr",),
    "ar": ("ar",), "hi": ("hi",), "cmn": ("cmn",), "ja": ("ja",), "ko": ("ko",),
    "vi": ("vi", "vi-vn-x-central", "vi-vn-x-south"), "sv": ("sv",),
}
VOICE_VARIANTS: tuple[str, ...] = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
    "Andy", "Annie", "Denis", "edward", "iven", "linda", "max", "michel", "steph", "grandma", "grandpa")
ALL_LANGUAGES: tuple[str, ...] = tuple(LANGUAGE_VOICES)


@lru_cache(maxsize=1)
def _corpora() -> dict[str, list[str]]:
    data = json.loads(CORPORA_PATH.read_text(encoding="utf-8"))
    return {lang: list(sentences) for lang, sentences in data.items() if not lang.startswith("_")}


def sentences(language: str) -> list[str]:
    """The shipped sentences of ``language`` (a key of ``LANGUAGE_VOICES``)."""
    corpora = _corpora()
    if language not in corpora:
        raise ValueError(f"language {language!r}: no sentences shipped; use one of {sorted(corpora)}")
    return list(corpora[language])


def voices(language: str) -> tuple[str, ...]:
    """espeak-ng voices (accents) of ``language``."""
    if language not in LANGUAGE_VOICES:
        raise ValueError(f"language {language!r}: no espeak-ng voices listed; use one of {sorted(LANGUAGE_VOICES)}")
    return LANGUAGE_VOICES[language]
