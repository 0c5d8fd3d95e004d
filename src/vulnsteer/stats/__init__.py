"""vulnsteer.stats."""
