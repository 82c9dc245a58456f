#!/usr/bin/env python
"""Push a distilled student folder (written by scripts/distill.py) to the Hugging Face Hub, with its model card.

    python scripts/push_to_hub.py outputs/mbv2-acamkd your-name/deeplabv3-mbv2-acamkd-cityscapes [--private]

Uploads exactly the student's files (config, safetensors weights, image processor, modeling code), the model card
(README.md, re-rendered from the run's record), run_config.json, metrics.json and the training log
(trainer_state.json). Never the teacher, never checkpoints, the distillation modules only with
--include_distillation_modules. The token comes from `hf auth login` or HF_TOKEN; it is never printed.
Same as the ``acamkd-push`` command (:func:`acamkd_hf.push_command.main`).
"""

import sys

from acamkd_hf.push_command import main

if __name__ == "__main__":
    sys.exit(main())
