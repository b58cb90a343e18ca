"""Train, evaluate and register the server's models: `python -m training --help`."""
