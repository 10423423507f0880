"""``python -m heros_archiver.testing camera ...``: a simulated camera process driven over stdin."""

import sys

from . import __doc__ as usage
from . import _camera_main

if len(sys.argv) > 1 and sys.argv[1] == "camera":
    _camera_main(sys.argv[2:])
else:
    raise SystemExit(usage)
