"""Gateway test fixtures (defined in gateway_support.py, importable by name under importlib mode)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from gateway_support import gateway, service  # noqa: F401  (fixtures)
