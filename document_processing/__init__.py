"""From documents (PDF, Markdown, text) to clean, chunked training data."""
