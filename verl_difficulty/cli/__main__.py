"""``python -m verl_difficulty.cli``: the same as the ``verl-difficulty`` command."""

import sys

from verl_difficulty.cli import main

sys.exit(main())
