"""WordNet for nltk's METEOR (the python metrics backend), offline.

nltk.download() cannot run here, but Debian's wordnet-base + wordnet-sense-index ship the
WordNet 3.0 database files. They lack `lexnames`, which nltk's reader opens at start-up; its
content is fixed by WordNet 3.0 (lexnames(5WN)), so we write it next to copies of the rest.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

WORDNET_APT_PACKAGES = ("wordnet-base", "wordnet-sense-index")
_WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/WordNet-3.0/dict", "/usr/share/wordnet/dict")
_WORDNET_FILES = tuple(f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")) + (
    "noun.exc", "verb.exc", "adj.exc", "adv.exc")
_WORDNET_OPTIONAL_FILES = ("index.sense", "cntlist.rev")
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_LEXNAME_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def load_wordnet(search_dirs: tuple[str, ...] = _WORDNET_DIRS, cache_dir: Path | None = None):
    """nltk's WordNet reader, or None when no WordNet is installed. Uses nltk's own corpus when
    present; else lays a system WordNet dict out as nltk_data/corpora/wordnet under `cache_dir`
    (default ~/.cache/caption-pipeline, a temp dir when that is read-only) and adds that
    nltk_data dir to nltk.data.path. nltk loads the reader lazily, once per process."""
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        source = next((Path(d) for d in search_dirs if all((Path(d) / f).is_file() for f in _WORDNET_FILES)), None)
        if source is None:
            return None
        _wordnet_layout(source, cache_dir or Path.home() / ".cache" / "caption-pipeline")
    return nltk.corpus.wordnet


def _wordnet_layout(source: Path, cache_dir: Path) -> Path:
    """Copies, not links: nltk's path sandbox refuses symlinks that resolve outside its data
    paths and any hard-linked file. About 35 MB, copied once per cache dir."""
    import nltk

    try:
        data_root = cache_dir / "nltk_data"
        (data_root / "corpora" / "wordnet").mkdir(parents=True, exist_ok=True)
    except OSError:
        data_root = Path(tempfile.mkdtemp(prefix="nltk_data-"))
        (data_root / "corpora" / "wordnet").mkdir(parents=True)
    root = data_root / "corpora" / "wordnet"
    for name in _WORDNET_FILES + _WORDNET_OPTIONAL_FILES:
        if (source / name).is_file() and not (root / name).is_file():
            staging = root / f"{name}.{os.getpid()}.tmp"
            shutil.copyfile(source / name, staging)
            staging.replace(root / name)  # atomic, so a concurrent run never reads half a file
    if not (root / "lexnames").is_file():
        lines = [f"{n:02d}\t{name}\t{_LEXNAME_CATEGORY[name.split('.')[0]]}\n" for n, name in enumerate(_LEXNAMES)]
        staging = root / f"lexnames.{os.getpid()}.tmp"
        staging.write_text("".join(lines))
        staging.replace(root / "lexnames")
    if str(data_root) not in map(str, nltk.data.path):
        nltk.data.path.append(str(data_root))  # nltk only opens files under its data paths
    return root
