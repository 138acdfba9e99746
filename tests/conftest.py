import os
import sys

# The storage emulator (tests/gcs_emulator.py) speaks the JSON API only; gcsfs's lookup of a
# bucket's layout goes to the gRPC control plane, which it has not, and must be off before
# gcsfs is imported.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

# Tests share small helpers (tiny HF model builders) that live next to this file.
sys.path.insert(0, os.path.dirname(__file__))
