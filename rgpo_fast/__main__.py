"""`python -m rgpo_fast` is `python -m rgpo_fast.train`."""

import sys

from rgpo_fast.train import main

sys.exit(main())
