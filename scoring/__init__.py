"""Batch scoring: `python -m scoring` scores a table with a stored tag, by the server's
checks and runtime, on one machine (scoring/local.py) or on Apache Spark (scoring/spark.py).
The per-batch scoring core is the server's (model_server/models/scoring.py); docs/batch.md."""
