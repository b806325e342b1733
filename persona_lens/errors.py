"""Named errors: bad input fails loudly with the problem in the exception's name and message."""


class PersonaLensError(Exception):
    """Base class of every error persona_lens raises on purpose."""


class PersonaSpecError(PersonaLensError, ValueError):
    """A persona spec (JSON) is malformed: missing keys, empty lists, a pos equal to its neg."""


class UnknownModelError(PersonaLensError, ValueError):
    """A model name is neither an embedded model, a local path, nor loadable offline."""


class LayerOutOfRangeError(PersonaLensError, IndexError):
    """A layer index outside [0, n_layers)."""


class VectorShapeError(PersonaLensError, ValueError):
    """A vector's width or layer count does not match the model or the other vectors."""


class NonFiniteError(PersonaLensError, ValueError):
    """A tensor that must be finite holds NaN or inf."""


class EmptyResponseError(PersonaLensError, ValueError):
    """A response tokenizes to zero tokens, so a response mean is undefined."""


class VectorFileError(PersonaLensError, ValueError):
    """A vector file does not follow the persona_lens / Persona Vectors layout."""


class ModelMismatchError(PersonaLensError, ValueError):
    """Vectors from different models (or widths) were combined."""


class JudgeError(PersonaLensError, RuntimeError):
    """A judge endpoint answered with something that cannot be scored (malformed body...)."""


class FastPathLimitError(PersonaLensError, ValueError):
    """A request does not fit a compiled generator's static shapes (batch or cache length)."""


class StoreLockedError(PersonaLensError, RuntimeError):
    """Another process holds the write lock of a resumable file (``<file>.lock``)."""


class InputFileError(PersonaLensError, ValueError):
    """An input file cannot be used: not UTF-8, malformed JSONL, a row missing a field, or empty."""


class MissingLayerError(LayerOutOfRangeError):
    """A row a vector does not hold: the last layer of an imported Persona Vectors ``.pt`` file
    (its last row is after the final norm), or the embedding / final-norm row of a vector made
    without them."""


class ContextLengthError(PersonaLensError, ValueError):
    """A prompt plus the tokens to generate do not fit the model's context window."""


class NoEffectivePairsError(PersonaLensError, ValueError):
    """Judge filtering removed every contrastive pair: nothing is left to extract from."""
