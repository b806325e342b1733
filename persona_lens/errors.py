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


class OperatorError(PersonaLensError, ValueError):
    """A steering operator cannot be built: an unknown operator, ``cap`` without bounds or with
    lo > hi, an ``alpha`` given to ``ablate``/``cap``, a zero direction, or two projections
    combined at one layer."""


class CalibratedJudgeFileError(JudgeError, ValueError):
    """A calibrated judge file is missing, malformed, or not a persona_lens calibrated judge."""


class WeakCalibrationError(JudgeError):
    """A calibrated judge agrees with its teacher judge less than required (cross-validated
    Pearson r below ``min_r``): it is neither saved nor used unless forced."""


class NoDoseCardError(PersonaLensError, ValueError):
    """A vector file has no dose card (``--strength`` needs one: run ``persona-lens calibrate``)."""


class StrengthOutOfRangeError(PersonaLensError, ValueError):
    """A calibrated ``--strength`` the dose card's coherent curve does not reach."""


class BudgetError(PersonaLensError, ValueError):
    """A judge-call budget is too small for the search asked of it (autotune)."""


class FoldError(PersonaLensError, ValueError):
    """A weight-folded export cannot be written: the output folder is already there, or the
    model has no GGUF source to copy."""


class FoldUnsupportedError(FoldError):
    """The model's architecture has no weight slot that adds a constant to the residual stream
    after a layer (its sublayer outputs are normalized before the residual add, or it has no
    bias option there), so steering cannot be folded into its weights."""


class LexiconFileError(JudgeError, ValueError):
    """A lexicon judge file is missing, not JSON, or malformed (unknown key, bad regex,
    non-numeric weight, no markers), or is applied to another persona than its trait."""


class MonitorLevelsError(PersonaLensError, ValueError):
    """The graded system prompts of the monitoring experiment are malformed (a levels file that is
    not JSON, fewer than 2 levels, a level without name/strength/system, a repeated name)."""
