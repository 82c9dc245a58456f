#!/usr/bin/env python
"""``acamkd-distill`` as a script, for launchers that take a file: ``accelerate launch scripts/distill.py ...``,
``torchrun --nproc_per_node N scripts/distill.py ...``, ``python scripts/distill.py ...``. The program is
:mod:`acamkd_hf.cli` (``--help`` lists every flag)."""

from acamkd_hf.cli import main

if __name__ == "__main__":
    main()
