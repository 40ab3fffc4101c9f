"""Store kinds: the protocol (base), the KINDS table (kinds) and one subpackage per kind."""
