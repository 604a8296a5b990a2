"""Business operations shared by the admin JSON API, the portal, the CLI and the demo,
so each rule (validation, masking, auditing) lives in exactly one place.

No function here commits: they ``flush()`` when they need an id, and the caller wraps
the whole user action in ``gateway.transaction.committed()``. That is what makes an
action that calls several services (a user and its first key) one transaction, and a
generation bump land in the same commit as the change it announces
(see docs/architecture.md, Transactions)."""
