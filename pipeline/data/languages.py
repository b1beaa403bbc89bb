"""Caption languages in the manifest: its `language` column holds the language code of each
caption, parallel to `captions` (DEFAULT_LANGUAGE, English, for sources that do not say), and
`data.languages` keeps the captions of some languages only."""
from __future__ import annotations

from collections.abc import Iterable, MutableMapping, Sequence
from typing import Protocol

from pipeline.data.formats.common import DEFAULT_LANGUAGE, LANGUAGE_CODE
from pipeline.data.paths import ManifestError

LANGUAGE = "language"


class Captioned(Protocol):
    captions: list[str]
    languages: list[str]


def check_codes(codes: Sequence[str], where: str = "data.languages") -> None:
    if not all(is_code(c) for c in codes) or len(set(codes)) < len(codes):
        raise ManifestError(
            f"{where} must list distinct lower-case language codes such as [en, de] ([] = every "
            f"language of the source), got {list(codes)}"
        )


def is_code(code: object) -> bool:
    return isinstance(code, str) and LANGUAGE_CODE.fullmatch(code) is not None


def is_language_list(codes: object, n_captions: int) -> bool:
    """One language code per caption."""
    return (not isinstance(codes, str) and hasattr(codes, "__len__") and len(codes) == n_captions
            and all(is_code(c) for c in codes))


def default_column(captions: Iterable[Sequence[str]]) -> list[list[str]]:
    """The column for captions whose source names no language."""
    return [[DEFAULT_LANGUAGE] * len(c) for c in captions]


def keep_languages(images: MutableMapping[str, Captioned], wanted: Sequence[str], source: str) -> list[str]:
    """Keep only the captions in `wanted` languages; a language the source lacks altogether is
    an error naming those it has. Returns (and removes) the images left without a caption."""
    present = sorted({language for image in images.values() for language in image.languages})
    missing = [language for language in wanted if language not in present]
    if missing:
        raise ManifestError(
            f"data.languages asks for {', '.join(missing)}, but {source} has captions in "
            f"{', '.join(present) or 'no language'}; set data.languages to some of those, or [] for all"
        )
    emptied = []
    for image_id, image in images.items():
        keep = [k for k, language in enumerate(image.languages) if language in wanted]
        if image.captions and not keep:  # an image that never had a caption is reported as such
            emptied.append(image_id)
        image.captions = [image.captions[k] for k in keep]
        image.languages = [image.languages[k] for k in keep]
    for image_id in emptied:
        del images[image_id]
    return emptied
