"""Pieces every command shares: config, errors, file handling, logging."""
