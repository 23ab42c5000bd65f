"""MLLP: the listener (source), the client, and the forwarding destination."""
