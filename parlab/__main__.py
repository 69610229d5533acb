"""``python -m parlab`` (and ``torchrun -m parlab``) is the ``parlab`` command."""

import sys

from parlab.cli import main

sys.exit(main())
