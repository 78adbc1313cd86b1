"""``python -m vasa3d``: the same as the ``vasa3d`` command."""

import sys

from vasa3d.cli import main

sys.exit(main())
