"""The bottom layer: errors, atomic files, the typed run manifest, tasks, metrics, statistics and
splits. Plain Python and numpy only; every other layer may import it, it imports none of them."""
