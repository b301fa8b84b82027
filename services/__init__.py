"""The five modelstream services; each is `python -m modelstream.services.<name>`."""
