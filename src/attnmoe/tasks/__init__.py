"""attnmoe.tasks."""
