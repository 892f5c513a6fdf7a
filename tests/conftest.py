import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402
from tiny import CTX, HOOK  # noqa: E402

# Metadata of the SAEs fitted on the tiny random model (what SAEBench's loop reads).
META = dict(
    model_name="tiny-random",
    hook_name=HOOK,
    context_size=CTX,
    dataset_path="in-memory",
    prepend_bos=False,
)


@pytest.fixture(scope="module")
def lm(request):
    """(model, dataset, 1,500 activation rows) of the tiny random model; a test module sets
    ``LM_SEED`` to draw its own."""
    from tiny import tiny_dataset, tiny_model

    from sae_fvu_plugin.clustering import collect_activations

    seed = getattr(request.module, "LM_SEED", 4)
    model, ds = tiny_model(offset=2.0, seed=seed), tiny_dataset(n=64, seed=seed)
    acts = collect_activations(
        model,
        ds,
        HOOK,
        1500,
        context_size=CTX,
        batch_prompts=4,
        drop_first_position=True,
        progress=False,
    )
    return model, ds, acts


def fake_result(path, ev, reps, level=0.95, **prov_changes):
    """A plugin-written SAEBench result JSON with one definition (``fvu_a``), its interval,
    replicates and pairing provenance (``prov_changes`` overrides provenance fields)."""
    import json

    prov = {
        "tokens_fingerprint": "0f" * 16,
        "model": "tiny-random",
        "hook": "blocks.0.hook_resid_post",
        "tokens": 100,
        "batches": 2,
        "bootstrap": 3,
        "seed": 0,
        "units_fingerprint": "ab",
    }
    rq = {
        "explained_variance_by_definition": {"fvu_a": ev},
        "explained_variance_ci": {"fvu_a": [ev - 0.1, ev + 0.1]},
        "explained_variance_ci_level": level,
        "explained_variance_replicates": {"fvu_a": reps},
        "explained_variance_provenance": {"fvu_a": prov | prov_changes},
    }
    path.write_text(json.dumps({"eval_result_metrics": {"reconstruction_quality": rq}}))
    return str(path)
