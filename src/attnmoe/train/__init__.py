"""attnmoe.train."""
