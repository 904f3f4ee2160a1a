"""Evals: sliding-window perplexity (perplexity.py), passkey and LongChat retrieval; shared text loading (texts.py)."""
