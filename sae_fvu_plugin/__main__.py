"""``python -m sae_fvu_plugin COMMAND ...`` = ``sae-fvu COMMAND ...`` (and what torchrun
starts: ``torchrun --nproc_per_node N -m sae_fvu_plugin fit ...``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
