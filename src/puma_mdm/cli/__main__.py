"""``python -m puma_mdm.cli ARGS`` = ``puma ARGS`` (handy under ``torchrun -m``)."""

import sys

from puma_mdm.cli import main

sys.exit(main())
