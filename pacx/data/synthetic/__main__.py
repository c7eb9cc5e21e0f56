"""``python -m pacx.data.synthetic``: see :func:`pacx.data.synthetic.cli.main`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
