from tests.gateway.sessions.harness import browser, site, site_factory
from tests.gateway.sessions.live import running

__all__ = ["browser", "running", "site", "site_factory"]
