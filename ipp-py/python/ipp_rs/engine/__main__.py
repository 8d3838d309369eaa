"""``python -m ipp_rs.engine``: see :mod:`ipp_rs.engine`."""

import sys

from ipp_rs.engine import main

sys.exit(main())
