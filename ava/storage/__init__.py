"""Object storage by URL scheme: ``get_storage(url)`` (see registry.py)."""
