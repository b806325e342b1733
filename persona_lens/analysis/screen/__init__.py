"""Training-data screening by projection difference (Persona Vectors, Chen et al. 2025).

For a training row (prompt ``x``, candidate response ``y``) and the base model's own greedy
response ``y'`` to the same prompt::

    projection       = mean_{t in y}  h_t[layer] . v[layer] / ||v[layer]||
    base_projection  = mean_{t in y'} h_t[layer] . v[layer] / ||v[layer]||
    projection_diff  = projection - base_projection            (the paper's ΔP)

where ``h_t`` is the base model's ``blocks.{layer}.hook_resid_post`` on the tokens of the
response given the prompt (response-mean activation, then projected). Large positive ΔP flags
a sample that pushes the model towards the trait more than its own answer would.

``run(model, ScreenConfig(data=..., out=..., layer=...), vector=v) -> ScreenResult`` (the
pattern of :mod:`persona_lens.analysis.base`) streams: rows are read and processed in chunks
(default 256); only running statistics, a top-K heap and a bounded window of the base-response
cache are held in memory. Base responses are generated once and kept in a resumable JSONL
store (:class:`persona_lens.runs.store.ResumeStore` in its windowed, low-memory mode) keyed by
a hash of the prompt messages (:func:`base_cache_key`) and fingerprinted by the model's weights
and the decoding settings (:func:`base_response_fingerprint`), appended per chunk, so an
interrupted run resumes without regenerating; rows from another model or another
``max_new_tokens`` are stale: never reused, generated again. The scored rows are written to a
temporary file and renamed at the end (atomic).

**Several traits at once** (:mod:`.multi`): ``run_multi(model, MultiScreenConfig(data, out=DIR,
layers=(L, ...)), vectors=[A, B, ...]) -> MultiScreenResult`` screens every trait at every
layer from one capture pass per chunk (the response-mean activations are computed once, one
product with the stacked unit directions gives every projection), streams per-row scores to
``DIR/scores.csv`` and ``DIR/scored.jsonl``, and reports per trait the dataset-level ΔP with a
confidence interval, the top-K rows, and the leakage matrix: the correlation (and covariance)
of per-row ΔP between traits over the dataset, from streaming co-moments
(:class:`persona_lens.stats.RunningCovariance`).

The package: :mod:`.common` (rows, base-response cache, histograms, top-K), :mod:`.single`
(one trait), :mod:`.multi` (many traits), :mod:`.leakage` (streaming covariance).
"""

from ...stats import RunningCovariance, mean_t_interval
from .common import (
    BaseResponses,
    GenerateFn,
    TopK,
    base_cache_key,
    base_response_fields,
    base_response_fingerprint,
    base_response_store,
    default_generate,
    histogram_from_file,
    screen_demo_path,
    training_row,
)
from .multi import (
    MultiScreenConfig,
    MultiScreenResult,
    column_label,
    trait_directions,
    trait_names,
    trait_projections,
)
from .multi import run as run_multi
from .single import TOP_FILE, ProjectFn, ScreenConfig, ScreenResult, projection_diff, response_projections, run

__all__ = ["TOP_FILE", "BaseResponses", "GenerateFn", "MultiScreenConfig", "MultiScreenResult", "ProjectFn",
           "RunningCovariance", "ScreenConfig", "ScreenResult", "TopK", "base_cache_key", "base_response_fields",
           "base_response_fingerprint", "base_response_store", "column_label", "default_generate",
           "histogram_from_file", "mean_t_interval", "projection_diff", "response_projections", "run",
           "run_multi", "screen_demo_path", "trait_directions", "trait_names", "trait_projections", "training_row"]
