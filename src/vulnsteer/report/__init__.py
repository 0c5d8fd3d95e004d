"""vulnsteer.report."""
