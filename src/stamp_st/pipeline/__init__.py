"""Multi-stage commands above the stack: ``reproduce`` (the paper's chain at scale, and its ``--smoke`` run on
a small HEST-layout root built from real data)."""
