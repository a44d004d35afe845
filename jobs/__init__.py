"""Jobs: orchestrate tiler → model → outputs for one scene or many."""
