"""persona_lens: find, blend, steer and monitor persona directions (Persona Vectors, BILLY).

Layer l everywhere = TransformerLens ``blocks.{l}.hook_resid_post`` = HF ``hidden_states[l+1]``.
"""

from ._version import __version__
from .activations import Captured, capture
from .extraction import extract, extract_from_rows
from .fast import CompiledSteeredGenerator
from .generation import generate, generate_contrastive, generate_ids
from .models import load_model
from .personas import PersonaSpec, load_persona
from .steering import Steering, steer
from .vectors import PersonaVector

__all__ = [
    "__version__", "load_model", "PersonaSpec", "load_persona", "generate", "generate_ids",
    "generate_contrastive", "capture", "Captured", "extract", "extract_from_rows", "PersonaVector",
    "Steering", "steer", "CompiledSteeredGenerator",
]
