import sys
from pathlib import Path

# The tests import `cases` (the differential test's generator) from this folder.
sys.path.insert(0, str(Path(__file__).parent))
