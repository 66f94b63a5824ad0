"""Test support: real servers and real processes the tests drive (importable, so worker
subprocesses and tests share them)."""
