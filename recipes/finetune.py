"""The main job, run as ``accelerate launch recipes/finetune.py [flags]``: see ``nullspace_hf/scripts/finetune.py``.

The same job is ``nullspace-hf finetune [flags]`` (through ``accelerate launch`` as well) and, in the process it
is started in, ``python -m nullspace_hf.scripts.finetune [flags]``.
"""

import sys

from nullspace_hf.scripts.finetune import cli

if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
