"""Where a run executes: the embedded local Ray or an existing cluster."""
