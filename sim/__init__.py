"""NumPy golden models and Python reference models."""
