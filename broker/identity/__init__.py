"""Identity: who may call, as what role (README "Identity and roles")."""
