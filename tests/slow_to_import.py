"""A module that takes DAYDREAM_TEST_IMPORT_S seconds to import: a forkserver preloading it stands
for one still importing the code location (tests/test_pool.py)."""

import os
import time

time.sleep(float(os.environ.get("DAYDREAM_TEST_IMPORT_S", "0")))
