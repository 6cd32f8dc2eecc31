"""Everything that talks to PostgreSQL: schema install/verify, named queries, the repository."""
