"""attnmoe.attention."""
