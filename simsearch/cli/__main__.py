"""``python -m simsearch.cli``: the ``simsearch`` command."""

import sys

from simsearch.cli import main

if __name__ == "__main__":
    sys.exit(main())
