"""``python -m pipeline.cli``: the same entry as the ``instantly-audit`` console script."""

import sys

from pipeline.cli.launch import main

sys.exit(main())
