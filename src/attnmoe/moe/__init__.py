"""attnmoe.moe."""
