"""Managers, the family registry and persistence (seeds 000 and 001).

`MM` wraps one model type and its fits, `MMMan` holds many models under ids, `Cerebrum` (and
`MMM`, seed 001's name for it) holds models of any registered family, fits, scores, classifies,
saves, loads and merges them. `registry` lists the families; `persistence` is the safe
single-file format.
"""

from cerebrum.brain import calm as _calm  # noqa: F401  (registers calm)
from cerebrum.brain import classical as _classical  # noqa: F401  (registers gmm and hmm)
from cerebrum.brain import gpt as _gpt  # noqa: F401  (registers gpt)
from cerebrum.brain import hybrids as _hybrids  # noqa: F401  (registers mmm, vrmgt)
from cerebrum.brain import mgm as _mgm  # noqa: F401  (registers mgm)
from cerebrum.brain import neat as _neat  # noqa: F401  (registers neat)
from cerebrum.brain.cerebrum import MMM, Cerebrum
from cerebrum.brain.managers import MM, MMMan

__all__ = ["MM", "MMM", "Cerebrum", "MMMan"]
