"""vulnsteer.steer."""
