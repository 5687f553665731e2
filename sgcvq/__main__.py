"""`python -m sgcvq ...`: the same as the `sgcvq` console script."""
import sys

from .cli import main

sys.exit(main())
