"""The escape suite: attacks run from inside sealed compartments.

The compartments live in ``escape_compartments``, a top-level module (no package), so the
zygote imports it by name from ``sys.path`` exactly as it imports the other test modules.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

