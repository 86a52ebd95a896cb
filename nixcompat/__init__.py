"""nixcompat."""
