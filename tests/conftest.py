import sys
from pathlib import Path

# Tests import the project's folders the way the scripts do: from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
