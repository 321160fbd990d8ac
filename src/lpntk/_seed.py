"""Seeds derived from a run's seed, so every random choice is reproducible on its own."""

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers, independent for each combination."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)
