"""attnmoe.estimation."""
