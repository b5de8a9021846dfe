"""One module per pipeline stage: pure DataFrame transforms plus a thin `run` I/O shell."""
