"""`make demo`: live middlebox insertion, replacement, drain and removal on a cluster."""
