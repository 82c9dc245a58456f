#!/usr/bin/env python
"""``acamkd-compare`` as a script: ``python scripts/compare.py --budget 0.25 ...``. The program is
:mod:`acamkd_hf.compare_command` (``--help`` lists every flag); it starts its own runs, one per GPU or CPU core, so
it is not itself launched with ``accelerate launch`` or ``torchrun``."""

from acamkd_hf.compare_command import main

if __name__ == "__main__":
    main()
