"""``python -m prefixcache.replay``: the same as ``clusterrouting-replay``."""

import sys

from prefixcache.replay import main

sys.exit(main())
