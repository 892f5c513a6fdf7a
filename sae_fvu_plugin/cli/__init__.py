"""``sae-fvu``: one command line for what a user does with the plugin.

    sae-fvu fit  --hook blocks.3.hook_resid_post --n-clusters 512 --out out/km512
    sae-fvu eval out/km512                   # SAEBench core eval, every definition
    sae-fvu sweep                            # the clustering sweep (make demo)
    sae-fvu frontier                         # SAEs vs clustering at every L0
    sae-fvu reproduce                        # the original experiment at its own scale
    sae-fvu compare A.json B.json            # paired difference of two eval results

Every flag is generated from the options the command runs with (help text and default
included). ``--help`` imports nothing heavy; a user error is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any

from ..experiments.config import FrontierConfig, ReproduceConfig, SweepConfig
from ..kmeans_options import KMeansOptions
from . import flags as _cli
from .commands import EvalCommand, FitCommand


def build_parser() -> argparse.ArgumentParser:
    p = _cli.Parser(
        prog="sae-fvu",
        description=_cli.plain_doc(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    f = sub.add_parser(
        "fit",
        help="fit a clustering SAE on a hook's activations",
        description=_cli.plain_doc(FitCommand.__doc__),
    )
    _cli.add_options(f, FitCommand)
    _cli.add_options(f, KMeansOptions, title="k-means options")
    e = sub.add_parser(
        "eval",
        help="SAEBench core eval of a saved SAE with the definition flags",
        description=_cli.plain_doc(EvalCommand.__doc__),
    )
    _cli.add_options(e, EvalCommand)
    from ..definitions import DEFINITIONS  # pydantic only: --help stays fast

    for action in e._actions:
        if action.dest in ("definition", "report"):
            action.help = f"{action.help} [valid: {', '.join(DEFINITIONS)}]"
    s = sub.add_parser(
        "sweep",
        help="the clustering sweep: k-means and PCA + k-means under every definition",
        description=_cli.plain_doc(SweepConfig.__doc__),
    )
    add_experiment_arguments(s, SweepConfig)
    fr = sub.add_parser(
        "frontier",
        help="SAEs vs clustering at every L0, under every definition",
        description=_cli.plain_doc(FrontierConfig.__doc__),
    )
    add_experiment_arguments(fr, FrontierConfig)
    rp = sub.add_parser(
        "reproduce",
        help="the original experiment at its scale: ~1M tokens, k-means 4,096 / 16,384, SAEs",
        description=_cli.plain_doc(ReproduceConfig.__doc__),
    )
    _cli.add_options(rp, ReproduceConfig)
    c = sub.add_parser(
        "compare",
        help="paired difference of two eval results (A.json B.json), per definition",
        description="Both values with their intervals and the paired difference with its "
        "interval, or why the two results are not paired.",
    )
    c.add_argument("results", nargs=2, metavar="RESULT_JSON", help="SAEBench result JSONs")
    return p


def run(argv: list[str] | None = None) -> Any:
    """Run one ``sae-fvu`` command and return its result (the eval result dict, the
    experiment's summary, the fitted SAE's folder, the paired differences)."""
    return _cli.run_main(_main, argv)


def main(argv: list[str] | None = None) -> int:
    """The console script: run the command, exit status 0 (user errors exit 2)."""
    run(argv)
    return 0


def _main(argv: list[str] | None) -> Any:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "fit":
            cmd: Any = FitCommand(**_cli.collect(args, FitCommand))
            options = KMeansOptions(**_cli.collect(args, KMeansOptions))
        elif args.command == "eval":
            cmd = EvalCommand(**_cli.collect(args, EvalCommand))
        elif args.command == "sweep":
            cmd = experiment_config(args, SweepConfig)
        elif args.command == "frontier":
            cmd = experiment_config(args, FrontierConfig)
        elif args.command == "reproduce":
            cmd = ReproduceConfig(**_cli.collect(args, ReproduceConfig))
    except (ValueError, TypeError) as err:
        raise _cli.UsageError(str(err)) from None
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="sae_lens")
    if args.command == "fit":
        from .fit import fit_command

        return fit_command(cmd, options)
    if args.command == "compare":
        from .compare import compare_command

        return compare_command(args.results)
    if args.command in ("sweep", "frontier", "reproduce"):
        from ..experiments.frontier import FRONTIER
        from ..experiments.reproduce import REPRODUCE
        from ..experiments.runner import run_experiment
        from ..experiments.sweep import SWEEP

        spec = {"sweep": SWEEP, "frontier": FRONTIER, "reproduce": REPRODUCE}[args.command]
        return run_experiment(spec, cmd)
    from .eval import eval_command

    return eval_command(cmd)


def add_experiment_arguments(parser: Any, cls: type) -> None:
    """The flags of an experiment config (generated from its fields) plus ``--full``."""
    _cli.add_options(parser, cls)
    parser.add_argument(
        "--full",
        action="store_true",
        help="the original experiment's scale (1M fit tokens; meant for a GPU); other flags "
        "override it",
    )


def experiment_config(args: Any, cls: type) -> Any:
    """The config the parsed flags describe (``--full``: its scale, flags given on top)."""
    given = _cli.collect(args, cls)
    if getattr(args, "full", False):
        defaults = {f.name: getattr(cls(), f.name) for f in fields(cls)}
        return cls.full(**{k: v for k, v in given.items() if v != defaults[k]})  # type: ignore[attr-defined]
    return cls(**given)
