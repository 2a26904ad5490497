"""Third-party code kept as it was published (see each file's header)."""
