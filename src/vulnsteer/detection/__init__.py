"""vulnsteer.detection."""
