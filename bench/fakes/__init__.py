"""Loopback fake servers speaking the real VLM wire protocols, and small procedural test images."""
