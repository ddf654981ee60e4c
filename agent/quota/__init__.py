"""Per-user and per-team quotas: the rules (`rules`), fixed calendar windows (`windows`), the
in-memory ledger that admits or refuses each request (`ledger`) and its rebuild from the store
at start (`history`). Nothing here does I/O on the request path."""
