"""``persona-lens judge calibrate`` / ``judge report``: fit a calibrated judge to another judge's
scores and report its agreement before it is used (see persona_lens.judges.calibrated)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import judges
from ..errors import JudgeError, WeakCalibrationError
from ..generation import generate_contrastive
from ..io import read_jsonl
from ..judges.calibrated import DEFAULT_MIN_R, FEATURE_KINDS, fit_calibrated_judge, read_calibrated_file
from ..personas import load_persona
from ..viz.judge import save_agreement_figure
from .inputs import check_jsonl
from .options import INPUT_FILE, JudgeOptions, OutputPath, backend_options, decoding_options


def qa_of_row(row: dict) -> tuple[str, str]:
    """``(question, answer)`` of a ``--data`` row: ``question`` and ``answer`` (or ``response``)."""
    answer = row.get("answer", row.get("response"))
    if not isinstance(row.get("question"), str) or not isinstance(answer, str):
        raise ValueError("a row needs string fields 'question' and 'answer' (or 'response')")
    return row["question"], answer


def _fmt(value) -> str:
    return "  n/a" if value is None else f"{float(value):6.3f}"


def _ci(pair) -> str:
    low, high = (list(pair) + [None, None])[:2] if pair else (None, None)
    return "[  n/a ]" if low is None or high is None else f"[{low:.3f}, {high:.3f}]"


def agreement_text(data: dict) -> str:
    """The agreement report of a calibrated judge file's contents, as a few aligned lines."""
    a, f = data["agreement"], data["features"]
    features = "MiniLM answer embedding" if f.get("kind") == "minilm" else \
        f"{f.get('model_id')} layer {f.get('layer')} ({f.get('pooling')})"
    conf = round(100 * float(a.get("confidence", 0.95)))
    lines = [
        f"calibrated judge of {data['teacher']} for {data.get('trait') or 'the eval prompt'}: {features}",
        f"  {a.get('n')} labelled answers ({a.get('n_dropped', 0)} without a teacher score left out), "
        f"{a.get('folds')}-fold cross-validated, bootstrap {a.get('n_boot')} x seed {a.get('seed')}",
        f"  Pearson r                  {_fmt(a.get('pearson_r'))}  {conf}% CI Fisher {_ci(a.get('pearson_ci_fisher'))}"
        f"  bootstrap {_ci(a.get('pearson_ci_bootstrap'))}",
        f"  kappa quadratic, 5 bins    {_fmt(a.get('kappa_quadratic_5bins'))}  {conf}% CI bootstrap "
        f"{_ci(a.get('kappa_quadratic_5bins_ci_bootstrap'))}",
        f"  kappa binary at 50         {_fmt(a.get('kappa_binary_50'))}  {conf}% CI bootstrap "
        f"{_ci(a.get('kappa_binary_50_ci_bootstrap'))}",
        f"  mean absolute error        {_fmt(a.get('mae'))}  (teacher mean {_fmt(a.get('teacher_mean')).strip()}, "
        f"calibrated mean {_fmt(a.get('predicted_mean')).strip()})",
        f"  min_r {float(data['min_r']):g}: " + ("forced" if data.get("forced") else
                                                 "passed" if (a.get("pearson_r") or -2) >= float(data["min_r"])
                                                 else "FAILED"),
    ]
    return "\n".join(lines)


@click.group("judge", short_help="calibrated judges: fit a small scorer to another judge's scores")
def judge_group() -> None:
    """Calibrated judges (``--judge calibrated:PATH`` in every command that takes a judge)."""


@judge_group.command("calibrate", short_help="fit a calibrated judge to a teacher judge and report the agreement")
@click.option("--teacher", "teacher_spec", required=True,
              help="the judge whose scores are learnt: openai:MODEL | local:MODEL | lexicon:NAME | calibrated:PATH")
@click.option("--base-url", default=None, show_default="$OPENAI_BASE_URL, else OpenAI",
              help="OpenAI-compatible endpoint for --teacher openai:MODEL")
@click.option("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
@click.option("--persona", required=True, help="built-in persona name or spec JSON file (its eval prompt is asked)")
@click.option("--data", type=INPUT_FILE, default=None, show_default="answers generated under the persona's pos/neg "
              "system prompts", help="JSONL of {question, answer} rows to label")
@click.option("--questions", "n_questions", type=click.IntRange(min=1), default=None, show_default="all",
              help="without --data: the first N questions of the persona")
@click.option("--n-per-question", type=click.IntRange(min=1), default=1,
              help="without --data: answers per instruction pair, question and polarity")
@click.option("--features", type=click.Choice(FEATURE_KINDS), default="activations",
              help="activations: --model's residual stream at --layer, averaged over the answer; minilm: the "
                   "answer's MiniLM embedding")
@click.option("--layer", type=click.IntRange(min=0), default=None, show_default="two thirds of the depth",
              help="layer of the activation features (blocks.L.hook_resid_post)")
@click.option("--folds", type=click.IntRange(min=2), default=5, help="cross-validation folds")
@click.option("--min-r", type=click.FloatRange(-1.0, 1.0), default=DEFAULT_MIN_R,
              help="least cross-validated Pearson r for the judge to be saved and used")
@click.option("--force", is_flag=True, help="save the judge even below --min-r")
@click.option("--n-boot", type=click.IntRange(min=1), default=1000, help="bootstrap resamples of each CI")
@click.option("--out", type=OutputPath(), required=True,
              help="judge file (.json); <out stem>.agreement.{html,csv,json} are written beside it")
@click.option("--quiet", is_flag=True, help="no progress bars")
@decoding_options(max_new_tokens=96, top_p=False)
@backend_options(batch_size=8, engine=True)
def calibrate(teacher_spec, base_url, api_key_env, persona, data, n_questions, n_per_question, features, layer,
              folds, min_r, force, n_boot, out, quiet, decoding, backend) -> int:
    """Score answers with --teacher, fit ridge regression from answer features to its scores, and
    print the teacher agreement of held-out (cross-validated) predictions: Pearson r, Cohen's
    kappa and bootstrap CIs. The judge file is written only when r >= --min-r (or --force); the
    per-answer scores and their scatter plot always are. --seed also seeds the folds and bootstraps."""
    teacher = JudgeOptions(teacher_spec, base_url, api_key_env)
    try:
        kind, _ = judges.parse_backend(teacher_spec)
    except JudgeError as exc:
        raise click.BadParameter(str(exc), param_hint="'--teacher'") from None
    if kind in ("none", "embedding"):
        raise click.BadParameter(f"{teacher_spec!r} cannot teach: it gives no scores without labels",
                                 param_hint="'--teacher'")
    teacher.check()
    spec = load_persona(persona)
    if data is not None:
        check_jsonl(data, qa_of_row)
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".json" else out
    needs_model = features == "activations" or data is None or kind == "local"
    model = backend.load() if needs_model else None
    if data is not None:
        qa = [qa_of_row(row) for row in read_jsonl(data)]
    else:
        questions = spec.questions[:n_questions] if n_questions else None
        rows = generate_contrastive(model, spec, Path(f"{stem}.responses.jsonl"), n_per_question=n_per_question,
                                    questions=questions, max_new_tokens=decoding.max_new_tokens,
                                    temperature=decoding.temperature, seed=decoding.seed,
                                    batch_size=backend.batch_size or 8, progress=not quiet,
                                    backend=backend.generator(model))
        qa = [(r["question"], r["response"]) for r in rows]
    judge, rows = fit_calibrated_judge(
        teacher.build(model, backend.model), spec, qa, features=features, model=model, layer=layer, folds=folds,
        min_r=min_r, n_boot=n_boot, seed=decoding.seed, batch_size=backend.batch_size or 8, progress=not quiet)
    figure = save_agreement_figure(rows, judge.agreement, f"{stem}.agreement",
                                   title=f"Calibrated judge vs {judge.teacher} ({spec.name})")
    contents = {**judge.to_dict(), "forced": force}
    click.echo(agreement_text(contents))
    if not (judge.accepted or force):
        raise WeakCalibrationError(
            f"cross-validated Pearson r {judge.agreement.get('pearson_r')} < --min-r {min_r:g}: {out} not written "
            f"(per-answer scores in {stem}.agreement.csv; --force saves it anyway)")
    judge.save(out, force=force)
    click.echo(json.dumps({"judge": str(out), "figure": str(figure), "rows": f"{stem}.agreement.csv",
                           "use_as": f"--judge calibrated:{out}"}))
    return 0


@judge_group.command("report", short_help="print the agreement report of a calibrated judge file")
@click.argument("path", type=INPUT_FILE)
def report(path) -> int:
    """Print the teacher agreement stored in a calibrated judge file (no model is loaded)."""
    click.echo(agreement_text(read_calibrated_file(path)))
    return 0
