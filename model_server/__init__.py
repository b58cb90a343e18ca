"""Core of the scikit-learn model server: transport-agnostic, shared by every front.

The fronts (HTTP JSON, Open Inference Protocol over REST and gRPC) only convert
between their wire format and the calls of `ModelServer`; validation, version
choice and batching happen here once.
"""
