"""Where a fitted SAE's training tokens came from, so evaluation can prove it is held out.

A :class:`Provenance` is stored in ``sae.cfg.metadata.provenance`` (plain JSON in
``cfg.json``): model, hook, dataset, tokenizer, context size, the split seed, the exact fit
contexts as ranges of context ids (row numbers in the tokenised corpus) and a hash of
their token ids. :func:`check_overlap` checks that the eval corpus holds the same tokens
at those ids and that the eval contexts avoid them; evaluation refuses overlap unless
explicitly allowed.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .validate import UsageError, check_int


def to_ranges(ids: Iterable[int]) -> list[list[int]]:
    """Sorted ids as half-open ranges [[start, stop), ...]."""
    out: list[list[int]] = []
    for i in sorted(set(int(x) for x in ids)):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def from_ranges(ranges: Iterable[Iterable[int]]) -> set[int]:
    out: set[int] = set()
    for r in ranges:
        a, b = (int(v) for v in r)
        out.update(range(a, b))
    return out


def corpus_hash(contexts: Any) -> str:
    """sha256 of a (n, context_size) token-id tensor's values."""
    t = contexts.detach().to("cpu").contiguous()
    return "sha256:" + hashlib.sha256(t.numpy().tobytes()).hexdigest()[:32]


@dataclass(frozen=True)
class Provenance:
    """The data a clustering SAE was fitted on."""

    model_name: str
    hook_name: str
    dataset: str
    context_size: int
    tokenizer: str | None = None
    prepend_bos: bool = True
    hook_head_index: int | None = None
    drop_first_position: bool = True
    split_seed: int | None = None
    corpus_contexts: int | None = None
    fit_contexts: list[list[int]] = field(default_factory=list)
    fit_contexts_sha256: str | None = None
    fit_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("model_name", "hook_name", "dataset"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"Provenance.{name} must be a non-empty string.")
        check_int("context_size", self.context_size, 1)
        for r in self.fit_contexts:
            if len(r) != 2 or not 0 <= int(r[0]) < int(r[1]):
                raise ValueError(f"Provenance.fit_contexts holds a bad range {r!r}.")

    @property
    def fit_ids(self) -> set[int]:
        return from_ranges(self.fit_contexts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        if not isinstance(data, Mapping):
            raise ValueError(f"provenance must be a JSON object, got {type(data).__name__}.")
        names = set(cls.__dataclass_fields__)
        unknown = set(data) - names
        if unknown:
            raise ValueError(
                f"Unknown provenance keys {sorted(unknown)}; expected {sorted(names)}."
            )
        values: dict[str, Any] = {
            k: (list(map(list, v)) if k == "fit_contexts" else v) for k, v in data.items()
        }
        return cls(**values)

    @classmethod
    def of_split(
        cls,
        split: Any,
        fit_ids: list[int],
        *,
        model_name: str,
        hook_name: str,
        dataset: str,
        context_size: int,
        tokenizer: Any,
        split_seed: int,
        fit_tokens: int,
    ) -> Provenance:
        """The provenance of a fit on contexts ``fit_ids`` of a
        :class:`~sae_fvu_plugin.data.TextSplit` (BOS prepended, first position dropped)."""
        return cls(
            model_name=model_name,
            hook_name=hook_name,
            dataset=dataset,
            context_size=context_size,
            tokenizer=f"{Path(str(getattr(tokenizer, 'name_or_path', 'unknown'))).name}:{len(tokenizer)}",
            prepend_bos=True,
            drop_first_position=True,
            split_seed=split_seed,
            corpus_contexts=split.corpus_contexts,
            fit_contexts=to_ranges(fit_ids),
            fit_contexts_sha256=split.contexts_hash(fit_ids),
            fit_tokens=fit_tokens,
        )

    @classmethod
    def from_metadata(cls, metadata: Any) -> Provenance | None:
        if metadata is not None and not hasattr(metadata, "get"):
            raise ValueError(f"metadata must be a JSON object, got {type(metadata).__name__}.")
        raw = metadata.get("provenance") if metadata is not None else None
        return None if raw is None else cls.from_dict(raw)


class OverlapError(UsageError):
    """Evaluation would score an SAE on tokens it was fitted on."""


@dataclass
class OverlapReport:
    """Fit and eval contexts of one evaluation and what they share."""

    fit_contexts: list[list[int]] | None
    eval_contexts: list[list[int]]
    overlap: int | None  # None: could not be checked (no provenance)
    checked: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_overlap(
    provenance: Provenance | None,
    eval_ids: Iterable[int],
    *,
    fit_hash_now: str | None,
    allow_overlap: bool = False,
) -> OverlapReport:
    """Compare eval context ids with the SAE's fit contexts.

    ``fit_hash_now``: the hash of the eval corpus's contexts at the SAE's fit ids (None if
    the corpus lacks them); it must equal the recorded one, or the ids name other text.
    No provenance: a warning that overlap cannot be checked. Overlap, or fit ids that name
    other text: :class:`OverlapError`, unless ``allow_overlap``."""
    eval_ids = sorted(set(int(i) for i in eval_ids))
    if provenance is None:
        warnings.warn(
            "This SAE records no provenance (fitted elsewhere): whether its evaluation "
            "tokens overlap its training tokens cannot be checked.",
            UserWarning,
            stacklevel=2,
        )
        return OverlapReport(None, to_ranges(eval_ids), None, False)
    same_text = (
        provenance.fit_contexts_sha256 is not None
        and provenance.fit_contexts_sha256 == fit_hash_now
    )
    if not same_text:
        if not allow_overlap:
            raise OverlapError(
                f"The SAE's fit contexts (recorded {provenance.fit_contexts_sha256}) are not "
                f"the contexts at the same ids of this eval corpus ({fit_hash_now}): it was "
                "fitted on another corpus, tokenizer or context size, so overlap cannot be "
                f"checked. Evaluate on {provenance.dataset!r} with context size "
                f"{provenance.context_size}, or pass --allow-overlap / allow_overlap=True."
            )
        return OverlapReport(provenance.fit_contexts, to_ranges(eval_ids), None, False)
    shared = provenance.fit_ids & set(eval_ids)
    if shared and not allow_overlap:
        raise OverlapError(
            f"{len(shared)} of {len(eval_ids)} eval contexts were used to fit this SAE (e.g. "
            f"{sorted(shared)[:5]}); scoring on fit tokens inflates explained variance. Pick "
            "held-out contexts, or pass --allow-overlap / allow_overlap=True."
        )
    return OverlapReport(provenance.fit_contexts, to_ranges(eval_ids), len(shared), True)
