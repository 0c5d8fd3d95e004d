"""vulnsteer.steering."""
