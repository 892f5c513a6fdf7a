"""Deprecated entry point: ``python -m sae_fvu_plugin.clustering`` moved to
``python -m sae_fvu_plugin`` (the ``sae-fvu`` command)."""

import sys

if __name__ == "__main__":
    args = " ".join(sys.argv[1:])
    sys.exit(
        "error: `python -m sae_fvu_plugin.clustering` was replaced by `python -m sae_fvu_plugin` "
        f"(the same as `sae-fvu`); run: python -m sae_fvu_plugin {args}".rstrip()
    )
