"""vulnsteer.detect."""
