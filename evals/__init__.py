"""Evals: sliding-window perplexity (perplexity.py); generation tasks (passkey.py, longchat.py) on the shared
harness (harness.py), listed in the registry tasks.py; shared text loading (texts.py)."""
