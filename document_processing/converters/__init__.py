"""Converters from parsed documents to training records."""
