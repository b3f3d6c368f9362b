"""The kernel side: program loading, attachment, the ABI mirrors and map sync (see docs/INTERNALS.md)."""
