"""Alembic migrations of the PostgreSQL schema (`broker.stores.database.upgrade_database`).

A package so the migration scripts ship inside the installed distribution and can be found
next to this file, without an `alembic.ini` in the working directory.
"""
