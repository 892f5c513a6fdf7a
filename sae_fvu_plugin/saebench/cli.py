"""``python -m sae_fvu_plugin.saebench``: SAEBench's own core CLI (registry releases via
``--sae_regex_pattern`` / ``--sae_block_pattern``, which needs the hub) plus the
explained-variance flags. For a local SAE folder use ``sae-fvu eval FOLDER``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sae_bench.evals.core import main as _core

from .._integration import DEFAULT_BOOTSTRAP, DEFAULT_CI_LEVEL, DEFAULT_DEFINITION
from ..definitions import DEFINITIONS
from .config import output_json_schema
from .patch import SAEBENCH

SCHEMA_PATH = Path(__file__).parent.parent / "schemas" / "eval_output_schema_core_fvu.json"


def arg_parser() -> argparse.ArgumentParser:
    """SAEBench's core CLI arguments plus the explained-variance options."""
    parser = _core.arg_parser()
    parser.description = "SAEBench core eval with a selectable explained-variance definition"
    parser.add_argument(
        "--explained_variance_definition",
        default=DEFAULT_DEFINITION,
        choices=list(DEFINITIONS),
        help=f"Definition reported as explained_variance (default {DEFAULT_DEFINITION}).",
    )
    parser.add_argument(
        "--explained_variance_report",
        nargs="*",
        default=[],
        help="Further definitions to report alongside ('all' for every one).",
    )
    parser.add_argument(
        "--explained_variance_bootstrap",
        type=int,
        default=DEFAULT_BOOTSTRAP,
        help=f"bootstrap replicates behind the intervals (default {DEFAULT_BOOTSTRAP}; 0: none)",
    )
    parser.add_argument(
        "--explained_variance_ci_level",
        type=float,
        default=DEFAULT_CI_LEVEL,
        help=f"interval coverage (default {DEFAULT_CI_LEVEL})",
    )
    return parser


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = arg_parser().parse_args(argv)
    with SAEBENCH.enabled(
        args.explained_variance_definition,
        args.explained_variance_report,
        bootstrap=args.explained_variance_bootstrap,
        ci_level=args.explained_variance_ci_level,
    ):
        results: list[dict[str, Any]] = _core.run_evaluations(args)
    print("Evaluation complete. All results have been saved incrementally.")
    return results


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(output_json_schema(), indent=2) + "\n")
    return path
