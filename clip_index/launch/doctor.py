"""`clip-index doctor`: the checks and the summary of a submit, without submitting."""

from __future__ import annotations

import argparse
import tempfile

from clip_index.launch import submit
from clip_index.launch.preflight import PreflightFailed, preflight
from clip_index.launch.preflight_template import summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    submit.add_arguments(parser)


def command(args: argparse.Namespace) -> int:
    """`clip-index doctor`: the submit's checks and summary, without submitting."""
    with tempfile.TemporaryDirectory() as tmp:
        template = args.template or submit.compile_template(args, tmp)
        spec = submit.read_template(template, args.project)
        params = submit.load_parameters(args.config, args.param)
        typed = (submit.check_parameters(template, params, args.project, spec=spec)
                 if params else {})
    try:
        preflight(args, spec, params=typed)
    except PreflightFailed as e:
        failed: PreflightFailed | None = e
    else:
        failed = None
    print("\nthe run:\n" + summary(spec, typed, args.pipeline_root))
    if failed:
        print(f"\n{failed}")
        return 1
    return 0
