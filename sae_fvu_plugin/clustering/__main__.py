"""``python -m sae_fvu_plugin.clustering fit|eval ...`` = ``sae-fvu fit|eval ...``
(and the module torchrun starts: ``torchrun --nproc_per_node N -m sae_fvu_plugin.clustering fit ...``)."""

from __future__ import annotations

from ..cli import main

if __name__ == "__main__":
    main()
