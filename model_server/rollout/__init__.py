"""Changing what serves on a running server: the routing changes and the admin operations that apply them."""
