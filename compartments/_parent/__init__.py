"""The parent's runtime: supervising compartments, calling them, and answering what they send."""
