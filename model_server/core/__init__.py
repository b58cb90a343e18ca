"""The transport-agnostic core: ModelServer.infer, the A/B split, batching and the prediction cache."""
