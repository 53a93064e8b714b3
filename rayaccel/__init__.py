"""rayaccel."""
