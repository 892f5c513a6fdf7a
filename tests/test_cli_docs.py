"""The ``sae-fvu`` command line and the docs' commands: errors before work (one line, exit
status 2), help without heavy imports, and every command the README and CONTRIBUTING show
parses against the real parser (their Python blocks run in ``make docs-test``)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import fake_result

from sae_fvu_plugin.cli import build_parser, main


def test_console_script_exits_zero(tmp_path, capsys):
    """The entry point's return value becomes the process's exit status: 0, not a result."""
    a = fake_result(tmp_path / "a.json", 0.8, [0.79, 0.8, 0.81])
    b = fake_result(tmp_path / "b.json", 0.7, [0.70, 0.69, 0.72])
    assert main(["compare", a, b]) == 0
    assert "paired difference" in capsys.readouterr().out
    script = Path(sys.executable).parent / "sae-fvu"
    done = subprocess.run([str(script), "compare", a, b], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "+0.10000" in done.stdout


ROOT = Path(__file__).resolve().parent.parent


def one_line_error(capsys, argv, match):
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert re.search(match, lines[0]), lines[0]


def test_user_errors_are_one_line_before_any_work(capsys, tmp_path):
    def fit(hook="blocks.3.hook_resid_post", n_clusters="8", *more):
        out = str(tmp_path / "o")
        return ["fit", "--hook", hook, "--n-clusters", n_clusters, "--out", out, *more]

    one_line_error(
        capsys,
        fit("blocks.3.hook_resid_pots"),
        r"hook 'blocks.3.hook_resid_pots'.*Did you mean 'blocks.3.hook_resid_post'",
    )
    one_line_error(capsys, fit(n_clusters="-4"), r"--n-clusters must be an integer ≥ 1, got -4")
    one_line_error(
        capsys,
        fit("blocks.40.hook_resid_post"),
        r"names layer 40, but the model has 30 layers \(blocks.0 … blocks.29\)",
    )
    one_line_error(capsys, ["sweep", "--layers", "3", "40"], r"the model has 30 layers")
    one_line_error(capsys, ["frontier", "--layers", "30"], r"the model has 30 layers")
    one_line_error(
        capsys,
        fit("blocks.3.hook_resid_post", "8", "--empty", "spilt"),
        r"empty must be one of split, farthest; got 'spilt'. Did you mean 'split'",
    )
    one_line_error(capsys, ["eval", str(tmp_path / "missing")], r"is not a folder")
    (tmp_path / "notsae").mkdir()
    one_line_error(capsys, ["eval", str(tmp_path / "notsae")], r"is not a saved SAE")
    from sae_fvu_plugin.clustering import fit_kmeans

    fit_kmeans(
        torch.randn(100, 8),
        4,
        progress=False,
        metadata={"model_name": "m", "hook_name": "blocks.0.hook_resid_post"},
    ).save_model(tmp_path / "sae")
    one_line_error(
        capsys,
        ["eval", str(tmp_path / "sae"), "--definition", "fvu_z"],
        r"Unknown explained-variance definition 'fvu_z'. Valid names: fvu_a",
    )
    one_line_error(
        capsys,
        ["eval", str(tmp_path / "sae"), "--ci-level", "95"],
        r"--ci-level must be in \(0, 1\), e.g. 0.95; got 95",
    )
    one_line_error(
        capsys, ["eval", str(tmp_path / "sae"), "--bootstrap", "-1"], r"--bootstrap must be"
    )
    one_line_error(capsys, ["eval", "some/release", "--sae-id", "layer_3"], r"needs|hub")
    one_line_error(
        capsys, ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")], r"does not exist"
    )


def test_a_bad_device_model_dataset_or_output_is_one_line(capsys, tmp_path):
    """What the machine or the hub cannot give is one line naming the fix (it was torch's,
    TransformerLens's or datasets' traceback): a device this torch does not reach, a model
    name TransformerLens does not know, a dataset that is not there (offline), an --out
    that is a file, a context longer than the model's positions (it ran out of memory on the
    attention mask), fit's n_pca not below the hook's width. Every experiment command goes
    through the same runner."""
    from sae_fvu_plugin.validate import UsageError, resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match="'banana' is not a torch device"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match=r"sees no CUDA device; pass --device cpu"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(UsageError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    small = ["--layers", "3", "--out", str(tmp_path / "o")]
    one_line_error(capsys, ["frontier", *small, "--device", "banana"], r"not a torch device")
    one_line_error(
        capsys,
        ["frontier", *small, "--model", "no-such-model"],
        r"--model 'no-such-model' cannot be loaded: no-such-model not found\. Pass a",
    )
    one_line_error(
        capsys,
        ["sweep", *small, "--dataset", str(tmp_path / "missing.txt")],
        r"--dataset '.*missing.txt' cannot be loaded: .*leave --dataset out",
    )
    fit = ["fit", "--hook", "blocks.3.hook_resid_post", "--n-clusters", "8"]
    one_line_error(
        capsys,
        [*fit, "--out", str(tmp_path / "f"), "--context-size", "100000"],
        r"--context-size 100000 exceeds the 8192 positions of smollm2-135m; pass at most 8192",
    )
    one_line_error(  # before the activations are collected (it failed after them)
        capsys,
        [*fit, "--out", str(tmp_path / "f"), "--n-pca", "600"],
        r"--n-pca 600 must be below the width 576 of blocks.3.hook_resid_post",
    )
    (tmp_path / "afile").write_text("x")
    one_line_error(
        capsys,
        ["reproduce", "--layers", "3", "--out", str(tmp_path / "afile")],
        r"--out .*afile is a file; pass a folder",
    )
    assert (tmp_path / "afile").read_text() == "x"


def test_help_imports_nothing_heavy():
    code = (
        "import sys, contextlib, io\n"
        "from sae_fvu_plugin.cli import build_parser\n"
        "p = build_parser()\n"
        "for sub in ('fit', 'eval', 'sweep', 'frontier', 'reproduce', 'compare'):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        p.parse_args([sub, '--help'])\n"
        "print(sorted(m for m in ('torch', 'sae_lens', 'sae_bench', 'transformer_lens') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_flag_has_help_and_default():
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("fit", "eval", "sweep", "frontier", "reproduce"):
        for action in subs[name]._actions:
            if action.dest in ("help", "full") or not action.option_strings:
                continue
            assert action.help and (
                "default:" in action.help
                or "(required)" in action.help
                or action.help.endswith(")")
            ), (name, action.dest)
            assert action.help.count("(default") <= 1, (name, action.help)
    eval_def = next(a for a in subs["eval"]._actions if a.dest == "definition")
    assert "fvu_a" in eval_def.help
    for name in ("fit", "eval", "sweep", "frontier", "reproduce", "compare"):
        text = subs[name].format_help()
        assert "``" not in text and ":class:" not in text, name
    assert "``" not in parser.format_help()


def doc_commands():
    """``sae-fvu ...`` lines of the bash blocks of README.md and CONTRIBUTING.md."""
    for doc in ("README.md", "CONTRIBUTING.md"):
        text = (ROOT / doc).read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            for line in block.splitlines():
                line = line.split("#", 1)[0].strip()
                for prefix in ("sae-fvu ", "torchrun "):
                    if line.startswith(prefix):
                        yield doc, line


def subcommand_flags(name: str) -> set[str]:
    subs = next(a for a in build_parser()._actions if a.dest == "command").choices
    return {s for action in subs[name]._actions for s in action.option_strings}


@pytest.mark.parametrize("doc, line", list(doc_commands()))
def test_documented_commands_parse(doc, line):
    args = shlex.split(line)
    if args[0] == "torchrun":
        args = args[args.index("-m") + 1 :]
        assert args[0] == "sae_fvu_plugin", (doc, line)
    args = args[1:]
    if args[-1] == "...":  # a partial command: its subcommand and every flag it names exist
        flags = subcommand_flags(args[0])
        unknown = [
            a.split("=")[0] for a in args if a.startswith("--") and a.split("=")[0] not in flags
        ]
        assert not unknown, (doc, line, unknown)
        return
    if "--help" in args:
        with pytest.raises(SystemExit) as err:
            build_parser().parse_args(args)
        assert err.value.code == 0
        return
    build_parser().parse_args(args)  # raises SystemExit(2) on an unknown flag


def test_documented_make_targets_and_scripts_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, flags=re.M))
    for doc in ("README.md", "CONTRIBUTING.md"):
        text = (ROOT / doc).read_text()
        for target in re.findall(r"\bmake ([a-z-]+)", text):
            assert target in targets, (doc, target)
        for script in re.findall(r"(benchmarks/\w+\.py|scripts/\w+\.(?:py|sh))", text):
            assert (ROOT / script).is_file(), (doc, script)


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    from sae_fvu_plugin.cli.flags import Interrupted, run_main

    def fit_stopped(argv):
        raise Interrupted("progress is saved in /x/.km.ckpt; run the same command again")

    def anything_stopped(argv):
        raise KeyboardInterrupt

    for body, match in ((fit_stopped, "saved in /x/.km.ckpt"), (anything_stopped, "again")):
        with pytest.raises(SystemExit) as err:
            run_main(body, [])
        assert err.value.code == 130
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("interrupted:") and match in lines[0]


def test_a_layer_beyond_a_loaded_model_names_its_depth():
    from tiny import tiny_model

    from sae_fvu_plugin.hooks import model_hook_width
    from sae_fvu_plugin.validate import UsageError

    model = tiny_model(seed=1)
    with pytest.raises(UsageError, match=r"the model has 2 layers \(blocks.0 … blocks.1\)"):
        model_hook_width(model, "blocks.5.hook_resid_post")
    assert model_hook_width(model, "blocks.1.hook_resid_post") == model.cfg.d_model
