"""Talking to the training platform: line protocol, the API client, the metric delivery sink."""
