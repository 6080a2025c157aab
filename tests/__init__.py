"""The test suite; a package so that `tests.fakes` imports from scripts and tests alike."""
