"""Where alignlab keeps its files: ALIGNLAB_HOME (default ~/.alignlab), for the database, Redis and artifacts."""

from __future__ import annotations

import os
from pathlib import Path


def alignlab_home() -> Path:
    return Path(os.environ.get("ALIGNLAB_HOME", Path.home() / ".alignlab")).expanduser()
