"""What the server reports: Prometheus metrics, logs, drift counting and the drift answer."""
