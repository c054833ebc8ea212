"""The demo: Acme CRM (a customer application), a mail catcher, and `gateway demo` wiring."""
