"""``python -m mindserve``: the ``mindserve`` command (``serve``, ``infer``); see ``mindserve.cli``."""

import sys

from mindserve.cli import main

if __name__ == "__main__":
    sys.exit(main())
