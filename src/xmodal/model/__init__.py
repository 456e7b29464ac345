"""The cross-modal model."""
