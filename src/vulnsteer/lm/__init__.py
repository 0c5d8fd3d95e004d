"""vulnsteer.lm."""
