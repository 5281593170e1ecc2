"""`python -m fastrnn`: the self-check (see fastrnn/_selfcheck.py)."""

import sys

from ._selfcheck import main

sys.exit(main())
