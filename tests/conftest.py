import os
import sys

# Tests share small helpers (tiny HF model builders) that live next to this file.
sys.path.insert(0, os.path.dirname(__file__))
