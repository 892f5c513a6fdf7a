#!/usr/bin/env python3
"""Upstream patch series for SAEBench and SAELens: prepare, export, check.

    python scripts/patches.py prepare saebench [--version X]  # editable git tree
    python scripts/patches.py export saebench                 # tree commits -> patches/
    python scripts/patches.py check                           # what `make patches-check` runs

A series is ``git format-patch`` output in ``patches/<name>/NNNN-*.patch``, made against the
pinned release's source as published on PyPI (the wheel's ``<package>/`` tree, upstream
repository layout). ``prepare`` unpacks the release into ``build/patches/<name>/src`` as a
git repository (one commit, tag ``upstream``) and applies the series on top as commits
(``git am --3way`` so a moved upstream leaves conflict markers to resolve). Edit, commit
or ``git rebase -i upstream``, then ``export`` rewrites the series from the commits.

``check`` (strict): fresh trees, ``git am`` without fuzz or 3-way (any reject fails),
patched packages installed into a scratch virtual environment layered over ``.venv``,
then the upstream tests the patches add and our equivalence tests
(``patches/equivalence``) run there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "patches"
PINS = {
    "saebench": ("sae-bench", "0.6.0", "sae_bench"),
    "saelens": ("sae-lens", "6.54.12", "sae_lens"),
}
GIT = [
    "git",
    "-c",
    "user.name=sae-fvu-plugin",
    "-c",
    "user.email=patches@sae-fvu-plugin.invalid",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "core.autocrlf=false",
]
ENV = {
    **os.environ,
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


def sh(cmd: list[str], cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, check=True, env=ENV, **kw)


def fetch(name: str, version: str | None = None) -> Path:
    """The release wheel from the package registry (cached in .cache/patches)."""
    dist, pinned, _ = PINS[name]
    version = version or pinned
    cache = Path(os.environ.get("SAE_FVU_CACHE", ROOT / ".cache")) / "patches"
    cache.mkdir(parents=True, exist_ok=True)
    stem = dist.replace("-", "_") + f"-{version}-"
    found = [p for p in cache.glob(f"{stem}*.whl")]
    if not found:
        sh(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                f"{dist}=={version}",
                "-d",
                str(cache),
                "-q",
            ]
        )
        found = [p for p in cache.glob(f"{stem}*.whl")]
    if not found:
        raise SystemExit(f"could not fetch {dist}=={version} from the package registry")
    return found[0]


def unpack(name: str, version: str | None = None) -> Path:
    """build/patches/<name>/src: the release's package tree as a git repo tagged upstream."""
    _, pinned, package = PINS[name]
    src = BUILD / name / "src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    with zipfile.ZipFile(fetch(name, version)) as zf:
        for member in zf.namelist():
            if member.startswith(package + "/"):
                zf.extract(member, src)
    sh(GIT + ["init", "-q", "-b", "main"], cwd=src)
    sh(GIT + ["add", "-A"], cwd=src)
    sh(GIT + ["commit", "-q", "-m", f"upstream {name} {version or pinned}"], cwd=src)
    sh(GIT + ["tag", "upstream"], cwd=src)
    return src


def series(name: str) -> list[Path]:
    return sorted((ROOT / "patches" / name).glob("*.patch"))


def apply(name: str, src: Path, strict: bool) -> None:
    patches = series(name)
    if not patches:
        raise SystemExit(f"patches/{name}/ holds no *.patch files")
    args = ["am", "-q"] + ([] if strict else ["--3way"])
    try:
        sh(GIT + args + [str(p) for p in patches], cwd=src)
    except subprocess.CalledProcessError:
        if strict:
            subprocess.run(GIT + ["am", "--show-current-patch=diff"], cwd=src)
            raise SystemExit(
                f"FAILED: patches/{name} does not apply cleanly to the pinned release "
                f"({PINS[name][0]}=={PINS[name][1]}); refresh it (CONTRIBUTING.md)."
            ) from None
        raise SystemExit(
            f"conflicts in {src}: resolve, `git am --continue`, then export."
        ) from None


def cmd_prepare(a: argparse.Namespace) -> None:
    src = unpack(a.name, a.version)
    apply(a.name, src, strict=False)
    print(
        f"{src}: upstream + {len(series(a.name))} patches as commits; edit, commit, then "
        f"`python scripts/patches.py export {a.name}`"
    )


def cmd_export(a: argparse.Namespace) -> None:
    src = BUILD / a.name / "src"
    out = ROOT / "patches" / a.name
    for old in series(a.name):
        old.unlink()
    sh(
        GIT
        + [
            "format-patch",
            "-q",
            "--no-signature",
            "--zero-commit",
            "--no-numbered",
            "-o",
            str(out),
            "upstream..HEAD",
        ],
        cwd=src,
    )
    for p in series(a.name):
        print(p.relative_to(ROOT))


def scratch_env() -> Path:
    """A venv whose own site-packages (patched packages) shadow .venv's (everything else)."""
    venv = BUILD / "venv"
    if venv.exists():
        shutil.rmtree(venv)
    sh([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    base = sysconfig.get_paths()["purelib"]
    (site / "zz_sae_fvu_base.pth").write_text(f"import site; site.addsitedir({base!r})\n")
    return venv


def cmd_check(a: argparse.Namespace) -> None:
    venv = scratch_env()
    py = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    upstream_tests: list[Path] = []
    for name, (dist, version, package) in PINS.items():
        src = unpack(name)
        apply(name, src, strict=True)
        n = len(series(name))
        shutil.copytree(src / package, site / package)  # "install" the patched tree
        added = subprocess.check_output(
            GIT + ["diff", "--name-only", "--diff-filter=A", "upstream", "HEAD", "--", "tests"],
            cwd=src,
            text=True,
            env=ENV,
        ).split()
        upstream_tests += [
            src / t for t in added if t.endswith(".py") and Path(t).name.startswith("test_")
        ]
        print(
            f"[patches-check] {dist}=={version}: {n} patch{'es' if n != 1 else ''} applied "
            f"cleanly; {len(added)} test file{'s' if len(added) != 1 else ''} added"
        )
    where = subprocess.check_output(
        [str(py), "-c", "import sae_bench, sae_lens; print(sae_bench.__file__, sae_lens.__file__)"],
        text=True,
    ).split()
    assert all(str(site) in w for w in where), (
        f"scratch env does not use the patched trees: {where}"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "SAE_FVU_PATCHED_UPSTREAM": "1",
    }
    tests = [str(t) for t in upstream_tests] + [str(ROOT / "patches" / "equivalence")]
    print(f"[patches-check] running {len(upstream_tests)} upstream test files + equivalence tests")
    r = subprocess.run(
        [
            str(py),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(ROOT / "patches"),
            *tests,
        ],
        env=env,
        cwd=ROOT / "patches",
    )
    if r.returncode:
        raise SystemExit("FAILED: patched upstream tests or equivalence tests")
    print("[patches-check] OK")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("prepare", "export"):
        s = sub.add_parser(cmd)
        s.add_argument("name", choices=list(PINS))
        if cmd == "prepare":
            s.add_argument("--version", default=None, help="another release (to refresh)")
    sub.add_parser("check")
    a = p.parse_args()
    {"prepare": cmd_prepare, "export": cmd_export, "check": cmd_check}[a.cmd](a)


if __name__ == "__main__":
    main()
