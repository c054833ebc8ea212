"""The impersonation gateway: a reverse proxy that lets vendor staff act as a customer user
only while, as whom and for as long as the customer approved, with every action audited."""
