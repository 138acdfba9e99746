import os
import sys

# The storage emulator (tests/gcs_emulator.py) speaks the JSON API only; gcsfs's lookup of a
# bucket's layout goes to the gRPC control plane, which it has not, and must be off before
# gcsfs is imported.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

# Tests share small helpers (tiny HF model builders) that live next to this file.
sys.path.insert(0, os.path.dirname(__file__))

from gcs_emulator import gcs  # noqa: E402, F401  (the `gcs` fixture: a bucket on 127.0.0.1, for every test)
