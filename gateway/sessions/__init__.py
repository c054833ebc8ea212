"""Sessions: console logins, the hand-off to routed hosts and their app sessions.

    records       console-session records and the verdict on them (Clock and epoch)
    epochs        the per-account session epoch that ends logins under way too
    console       aiohttp-session storage (Redis, Clock), CSRF, rotate at login, logout
    handoff       signed return addresses and one-time hand-off codes (host, port, browser)
    app_sessions  host-only app sessions that live and die with their console session
    ending        ending a console session with all its app sessions (logout), or all
                  sessions of an account at once, raising its epoch (disable, resets)
    ends          the session events listener: an ended login's in-flight flows end; and
                  the re-check that judges them as their lookups would, every 5 s
    prelogin      the signed pre-login cookie: nothing in Redis before a password
    signed        the signed, expiring tokens of return addresses and pre-login state
    routed        `/.gateway/auth` and `/.gateway/logout` on routed hosts
    logins        `logins_of(config_dict)`: the one bundle of all of these per app

Modules are imported by name (this package re-exports nothing, so the account store
can end sessions without importing the login machinery).
"""
