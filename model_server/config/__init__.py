"""What serves and how: the server's settings and the routing document (what serves each model name)."""
