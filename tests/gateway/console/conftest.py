from tests.gateway.sessions.harness import browser, site, site_factory

__all__ = ["browser", "site", "site_factory"]
