"""Business operations shared by the admin JSON API, the portal and the CLI, so each
rule (validation, masking, auditing) lives in exactly one place."""
