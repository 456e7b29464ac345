"""The stages of one run."""
