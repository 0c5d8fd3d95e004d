"""vulnsteer.experiment."""
