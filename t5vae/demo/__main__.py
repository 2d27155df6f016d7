"""``python -m t5vae.demo RUN [--host H] [--port P]``: the same as ``t5vae demo``."""

import sys

from t5vae.demo import main

sys.exit(main())
