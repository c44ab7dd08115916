"""`generate-qa`: question/answer training data written by a teacher model from the chunk records
of `extract`, one pair per window of sentences, grounded in its chunk, deduplicated, split by
document, every reply cached as it arrives (see generate.py)."""
