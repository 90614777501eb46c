"""Where things are in the repository: its root, and the bundled servables."""

from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLED_SERVABLES = os.path.join(REPO, "servables")
