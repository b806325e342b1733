"""`persona-lens` command line, on click.

Each command is thin: click parses and checks argv (option groups in :mod:`.options`, input
contents in :mod:`.inputs`), the command calls the library and prints. :mod:`.boundary` turns
every failure into one line and an exit code.
"""

from __future__ import annotations

import sys

import click

from .._version import __version__
from . import analysis, autotune, calibrate, core, demo, evals, export, fold, judge, monitor, persona, serve
from .boundary import PersonaLensGroup


@click.group("persona-lens", cls=PersonaLensGroup, no_args_is_help=True,
             context_settings={"show_default": True, "help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="persona_lens")
@click.option("--debug", is_flag=True, envvar="PERSONA_LENS_DEBUG",
              help="show the full traceback of an error instead of one line (also PERSONA_LENS_DEBUG=1)")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Find, blend, steer and monitor persona directions in language models.

    Workflow: extract a vector, sweep for the layer and alpha, then steer, monitor or screen.
    """
    if isinstance(ctx.obj, dict):
        ctx.obj["debug"] = debug


for command in (core.info, persona.persona, core.extract_cmd, demo.sweep, calibrate.calibrate, autotune.autotune,
                core.steer, core.generate_cmd, monitor.monitor, analysis.screen, analysis.blend_cmd, analysis.project,
                analysis.shift, evals.eval_group, judge.judge_group, export.export, export.import_cmd, fold.fold_cmd,
                serve.serve_command, demo.demo):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    return cli.main(argv, standalone_mode=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
