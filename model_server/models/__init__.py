"""A served tag: its input schema, loading from the model store, runtimes, drift reference and explanations."""
