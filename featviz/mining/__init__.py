"""Real corpus text: corpus sources and windows, the streaming exemplar miner and its
on-disk cache."""
