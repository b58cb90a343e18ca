"""The doors: the HTTP front door, the edge, the JSON API, OIP over REST and gRPC, the admin API, the web page."""
