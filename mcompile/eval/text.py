"""Long public-domain text for demos, calibration and evaluation (no network)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCES = {
    # Debian's bible-kjv package (apt-get install bible-kjv): about 1M tokens
    "bible-kjv": ["bible", "-f", "Gen1:1-Rev22:21"],
}


def load_text(source: str = "bible-kjv") -> str:
    """The whole text of a named source, or of a text file path."""
    if Path(source).is_file():
        return Path(source).read_text()
    if source not in SOURCES:
        raise ValueError(f"unknown text source {source!r}; known: {sorted(SOURCES)} or a path to a text file")
    cmd = SOURCES[source]
    if shutil.which(cmd[0]) is None:
        raise FileNotFoundError(f"text source {source!r} needs the Debian package {source}: apt-get install -y {source}")
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def token_prompt(tokenizer, text: str, length: int, offset: int = 0):
    """(1, length) token ids from ``text``, starting ``offset`` tokens in."""
    ids = tokenizer(text[: (offset + length) * 8], return_tensors="pt").input_ids
    if ids.shape[1] < offset + length:
        raise ValueError(f"text too short for {offset + length} tokens ({ids.shape[1]} available)")
    return ids[:, offset:offset + length]
