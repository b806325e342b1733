"""The built-in persona library (JSON files under personas/builtin/, written for persona_lens)."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from ..errors import PersonaSpecError
from .spec import PersonaSpec


def _builtin_dir() -> Path:
    return Path(str(files("persona_lens.personas").joinpath("builtin")))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in _builtin_dir().glob("*.json"))


def load_persona(name_or_path: str | os.PathLike) -> PersonaSpec:
    """A built-in persona by name, or a spec JSON file by path."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.exists():
            raise PersonaSpecError(f"persona file not found: {path}")
        return PersonaSpec.load(path)
    candidate = _builtin_dir() / f"{name_or_path}.json"
    if not candidate.exists():
        raise PersonaSpecError(
            f"unknown persona {str(name_or_path)!r}: not a file and not a built-in "
            f"(built-ins: {', '.join(builtin_names()) or 'none'})"
        )
    return PersonaSpec.load(candidate)
