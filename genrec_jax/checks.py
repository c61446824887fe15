"""Range checks of config fields where they are read (a clear error early).

  check_ranges([("train.batch_size", cfg.batch_size, 1, None),
                ("hints.dropout", c.hints.dropout, 0.0, 1.0)])

raises ValueError("config field 'hints.dropout' = 1.5: must be in [0.0,
1.0]") for the first value outside its closed range (None: unbounded).
"""

from __future__ import annotations

from typing import Any, Iterable


def check_ranges(checks: Iterable[tuple[str, Any, Any, Any]]) -> None:
  """Raises ValueError naming the first field outside [lo, hi]."""
  for field, value, lo, hi in checks:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
      if hi is None:
        want = f">= {lo}"
      elif lo is None:
        want = f"<= {hi}"
      else:
        want = f"in [{lo}, {hi}]"
      raise ValueError(f"config field '{field}' = {value}: must be {want}")
