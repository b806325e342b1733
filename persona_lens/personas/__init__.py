"""Persona specs: the Persona Vectors JSON format, the built-in library, generation of specs."""

from .library import builtin_names, load_persona
from .spec import EvalPromptPlaceholderWarning, InstructionPair, PersonaSpec

__all__ = ["PersonaSpec", "InstructionPair", "EvalPromptPlaceholderWarning", "load_persona", "builtin_names"]
