"""attnmoe.tasks.data."""
