"""Policy tests import their helpers (``policy_helpers``, ``scripted_server``) from this folder."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
